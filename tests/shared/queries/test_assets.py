"""shared.queries.assets: asset references and the cross-source price consensus."""
from __future__ import annotations

from decimal import Decimal

import pytest

from shared.models import CurrentQuote
from shared.queries.assets import price_consensus, split_asset_refs


def test_price_consensus_median_spread_and_edge_cases() -> None:
    """Median and relative spread; one priced source, none priced, and a zero median."""
    def quote(source: str, price: str | None) -> CurrentQuote:
        return CurrentQuote(source=source, price_usd=Decimal(price) if price else None)

    agree = price_consensus([quote("coingecko", "100.0"), quote("coinpaprika", "101.0")], 0.02)
    assert agree.price_usd == Decimal("100.5") and agree.disagree is False
    assert agree.spread == pytest.approx(1 / 100.5)
    disagree = price_consensus([quote("a", "100"), quote("b", "103"), quote("c", "99")], 0.02)
    assert disagree.price_usd == Decimal("100") and disagree.disagree is True
    one = price_consensus([quote("csv", "5"), quote("coingecko", None)], 0.02)
    assert (one.spread, one.disagree, one.sources) == (0.0, False, ["csv"])
    none = price_consensus([quote("csv", None)], 0.02)
    assert none.price_usd is None and none.spread is None and none.disagree is False
    zero = price_consensus([quote("a", "0"), quote("b", "0")], 0.02)
    assert zero.spread is None and zero.disagree is False


def test_asset_refs_split_into_bigint_ids_and_lowercase_slugs() -> None:
    """Digits are ids (beyond BIGINT they match nothing); blanks and NULs are dropped."""
    ids, slugs = split_asset_refs([" 1 ", "Bitcoin", "9" * 30, "", "   ", "a\x00b", "٣"])
    assert ids == [1]
    assert slugs == ["bitcoin", "٣"]
