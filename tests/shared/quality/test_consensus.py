"""Windowed consensus: only clean quotes observed near the freshest take part, and it says why."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from shared.quality.consensus import FLAGGED, NO_PRICE, OUT_OF_WINDOW, window_consensus
from shared.quality.checks import QualityThresholds, outlier_flags, quality_of

NOW = datetime(2025, 2, 9, 17, 44, 4, tzinfo=timezone.utc)
HOUR = 3600


@dataclass(frozen=True)
class Cur:
    """The fields of a current_quotes row that the consensus reads."""

    source: str
    observed_at: datetime
    price_usd: Decimal | None
    quality: dict[str, Any] | None = None


def test_a_year_old_quote_does_not_enter_todays_consensus() -> None:
    quotes = [Cur("coingecko", NOW, Decimal("96114.08")),
              Cur("coinpaprika", NOW - timedelta(minutes=4), Decimal("96250.1")),
              Cur("csv", NOW - timedelta(days=365), Decimal("45000"))]
    c = window_consensus(quotes, HOUR, 0.02)
    assert c.sources == ["coingecko", "coinpaprika"] and c.disagree is False
    assert c.price_usd == (Decimal("96114.08") + Decimal("96250.1")) / 2
    (left,) = c.excluded
    assert (left.source, left.reason) == ("csv", OUT_OF_WINDOW)
    assert "before the freshest" in left.detail
    assert (c.window_end, c.window_start) == (NOW, NOW - timedelta(hours=1))
    assert c.window_seconds == HOUR and not c.single_source


def test_the_demo_case_2025_2022_2026_is_not_a_disagreement() -> None:
    # The case: three prices years apart. The freshest alone is in the window.
    quotes = [Cur("coingecko", datetime(2025, 2, 9, tzinfo=timezone.utc), Decimal("96114")),
              Cur("coinpaprika", datetime(2022, 1, 30, tzinfo=timezone.utc), Decimal("38054")),
              Cur("csv", datetime(2026, 2, 9, tzinfo=timezone.utc), Decimal("70120"))]
    c = window_consensus(quotes, HOUR, 0.02)
    assert c.single_source and c.sources == ["csv"] and c.disagree is False
    assert c.spread == 0.0 and "only csv" in c.note
    assert {(e.source, e.reason) for e in c.excluded} == {
        ("coingecko", OUT_OF_WINDOW), ("coinpaprika", OUT_OF_WINDOW)}


def test_in_window_clean_quotes_that_disagree_say_so() -> None:
    quotes = [Cur("coingecko", NOW, Decimal("100")),
              Cur("coinpaprika", NOW - timedelta(minutes=10), Decimal("103"))]
    c = window_consensus(quotes, HOUR, 0.02)
    assert c.disagree is True and c.spread is not None and abs(c.spread - 3 / 101.5) < 1e-9
    assert c.sources == ["coingecko", "coinpaprika"] and c.excluded == []
    assert window_consensus(quotes, HOUR, 0.05).disagree is False


def test_flagged_quotes_are_left_out_with_their_flags() -> None:
    stored = quality_of([{"flag": "implausible", "reason": "x", "evidence": {}}])
    quotes = [Cur("coingecko", NOW, Decimal("100"), stored),
              Cur("coinpaprika", NOW, Decimal("101")),
              Cur("csv", NOW, None)]
    c = window_consensus(quotes, HOUR, 0.02)
    assert c.sources == ["coinpaprika"] and c.single_source
    assert [(e.source, e.reason, e.detail) for e in c.excluded] == [
        ("coingecko", FLAGGED, "flagged: implausible"), ("csv", NO_PRICE, "no price")]
    # Flags passed by the caller (computed now, not stored yet) count the same.
    c2 = window_consensus(quotes[1:2] + [Cur("csv", NOW, Decimal("100"))], HOUR, 0.02,
                          flags={"csv": [{"flag": "stale"}]})
    assert c2.sources == ["coinpaprika"] and c2.excluded[0].detail == "flagged: stale"


def test_a_freshly_flagged_quote_does_not_anchor_the_window() -> None:
    # The window is measured from the freshest CLEAN quote.
    quotes = [Cur("coingecko", NOW, Decimal("1"), quality_of([{"flag": "jump"}])),
              Cur("coinpaprika", NOW - timedelta(hours=3), Decimal("100")),
              Cur("csv", NOW - timedelta(hours=3, minutes=5), Decimal("100.5"))]
    c = window_consensus(quotes, HOUR, 0.02)
    assert c.sources == ["coinpaprika", "csv"] and c.window_end == NOW - timedelta(hours=3)


def test_nothing_clean_gives_no_price() -> None:
    c = window_consensus([Cur("csv", NOW, None)], HOUR, 0.02)
    assert c.price_usd is None and c.sources == [] and not c.disagree
    assert c.note == "no clean priced quote"


def test_an_outlier_flag_takes_the_doctored_quote_out_of_the_consensus() -> None:
    # Outlier, then consensus: the pair the publish step is meant to run.
    quotes = [Cur("coingecko", NOW, Decimal("96114.08")),
              Cur("coinpaprika", NOW - timedelta(minutes=2), Decimal("96210.5")),
              Cur("csv", NOW - timedelta(minutes=20), Decimal("115336.9"))]
    outliers = outlier_flags(quotes, QualityThresholds())
    assert list(outliers) == ["csv"]
    c = window_consensus(quotes, HOUR, 0.02, {s: [f] for s, f in outliers.items()})
    assert c.sources == ["coingecko", "coinpaprika"] and c.disagree is False
    assert c.excluded[0].detail == "flagged: outlier"


def test_as_dict_keeps_todays_fields_and_adds_the_window_and_exclusions() -> None:
    quotes = [Cur("coingecko", NOW, Decimal("96114.08")),
              Cur("csv", NOW - timedelta(days=365), Decimal("45000"))]
    body = window_consensus(quotes, HOUR, 0.02).as_dict()
    assert body["price_usd"] == body["min_price_usd"] == "96114.08"
    assert body["sources"] == ["coingecko"] and body["single_source"] is True
    assert body["window"] == {"seconds": HOUR, "start": (NOW - timedelta(hours=1)).isoformat(),
                              "end": NOW.isoformat()}
    assert body["excluded"] == [{"source": "csv", "reason": OUT_OF_WINDOW,
                                 "observed_at": (NOW - timedelta(days=365)).isoformat(),
                                 "detail": body["excluded"][0]["detail"]}]
    assert json.loads(json.dumps(body)) == body
