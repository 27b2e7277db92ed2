"""api.status.axes: the default scale (log past a 100x span), overrides, and round ticks."""
from __future__ import annotations

import math

import pytest

from api.status.axes import (
    LINEAR, LOG, choose_scale, linear_ticks, log_ticks, span_ratio, tick_label, value_axis,
)

# Bitcoin in data/: from 67.81 (2013) to 124,752.53 (2025), over 1,800x.
BTC_ALL = [67.81, 135.3, 1_000.0, 19_000.0, 69_000.0, 124_752.53]


@pytest.mark.parametrize(("values", "scale"), [
    (BTC_ALL, LOG),
    ([100.0, 10_000.0], LINEAR),  # exactly 100x is still linear
    ([100.0, 10_001.0], LOG),
    ([60_000.0, 70_000.0, 96_114.08], LINEAR),
    ([0.0, 1.0, 500.0], LINEAR),  # a zero price: no log axis can draw it
    ([5.0], LINEAR),
])
def test_default_scale_is_log_past_a_100x_span(values: list[float], scale: str) -> None:
    assert choose_scale(values) == scale


def test_an_explicit_scale_wins_when_it_can_be_drawn() -> None:
    assert choose_scale(BTC_ALL, LINEAR) == LINEAR
    assert choose_scale([60_000.0, 70_000.0], LOG) == LOG
    assert choose_scale([0.0, 70_000.0], LOG) == LINEAR  # log of zero: linear instead
    with pytest.raises(ValueError):
        choose_scale(BTC_ALL, "sqrt")


def test_span_ratio() -> None:
    assert span_ratio([50.0, 5_000.0, 100.0]) == 100.0
    assert span_ratio([]) is None and span_ratio([-1.0, 3.0]) is None


def test_log_ticks_are_powers_of_ten_over_many_decades() -> None:
    assert log_ticks(60.0, 130_000.0) == [100.0, 1_000.0, 10_000.0, 100_000.0]
    # Sixteen decades would be sixteen ticks: every second power instead.
    wide = log_ticks(1e-9, 1e6)
    assert len(wide) <= 8 and wide == [1e-8, 1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6]


def test_log_ticks_are_1_2_5_over_a_few_decades() -> None:
    assert log_ticks(150.0, 12_000.0) == [200.0, 500.0, 1_000.0, 2_000.0, 5_000.0, 10_000.0]
    assert log_ticks(0.003, 0.06) == [0.005, 0.01, 0.02, 0.05]
    with pytest.raises(ValueError):
        log_ticks(0.0, 10.0)


def test_a_narrow_log_axis_gets_linear_ticks() -> None:
    ticks = log_ticks(61_000.0, 97_000.0)  # no 1-2-5 value between: round linear steps
    assert ticks == [65_000.0, 70_000.0, 75_000.0, 80_000.0, 85_000.0, 90_000.0, 95_000.0]


def test_linear_ticks_are_round_steps() -> None:
    assert linear_ticks(99.6, 110.4) == [100.0, 102.0, 104.0, 106.0, 108.0, 110.0]
    assert linear_ticks(0.05, 0.95) == [0.2, 0.4, 0.6, 0.8]  # decimal, not 0.6000000000000001
    assert linear_ticks(-3.0, 1_000_000.0) == [0.0, 200_000.0, 400_000.0, 600_000.0,
                                               800_000.0, 1_000_000.0]


def test_log_axis_spaces_decades_equally_and_holds_every_value() -> None:
    axis = value_axis(BTC_ALL, LOG)
    assert axis.scale == LOG and axis.ticks == (100.0, 1_000.0, 10_000.0, 100_000.0)
    steps = [axis.fraction(b) - axis.fraction(a) for a, b in zip(axis.ticks, axis.ticks[1:])]
    assert all(math.isclose(step, steps[0]) for step in steps)
    fractions = [axis.fraction(v) for v in BTC_ALL]
    assert 0 < min(fractions) < 0.05 and 0.95 < max(fractions) < 1  # padded, not on the edge
    # On a linear axis the same history leaves 2013-2016 in the bottom 1% of the plot.
    linear = value_axis(BTC_ALL, LINEAR)
    assert linear.fraction(1_000.0) - linear.fraction(67.81) < 0.01
    assert axis.fraction(1_000.0) - axis.fraction(67.81) > 0.3


def test_flat_values_still_get_an_axis() -> None:
    for scale in (LINEAR, LOG):
        axis = value_axis([5.0, 5.0], scale)
        assert axis.lo < 5.0 < axis.hi and 0 < axis.fraction(5.0) < 1


def test_tick_labels() -> None:
    assert [tick_label(v) for v in (100_000.0, 1_000.0, 500.0, 0.5, 1e-8)] == [
        "100,000", "1,000", "500", "0.5", "1e-08"]
