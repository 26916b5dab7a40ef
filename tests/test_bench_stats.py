"""The accuracy benchmark's statistics against values worked by hand (not against scipy alone): paired
mean, sample standard deviation, t interval, t-test p value (closed-form t distributions for 1, 2 and
3 degrees of freedom), verdicts, pairing by seed, Holm's adjustment and the table cells."""

from __future__ import annotations

import math
import statistics

import pytest

from bench.accuracy import format_comparison, holm, mean_sd, pair_by_seed, paired_stats


def _p_two_sided(t: float, df: int) -> float:
    """Two-sided p value of Student's t from its closed-form CDF for 1, 2 and 3 degrees of freedom."""
    t = abs(t)
    if df == 1:  # Cauchy
        return 1 - 2 / math.pi * math.atan(t)
    if df == 2:
        return 1 - t / math.sqrt(t * t + 2)
    if df == 3:
        x = t / math.sqrt(3)
        return 1 - 2 / math.pi * (x / (1 + x * x) + math.atan(x))
    raise ValueError(df)


def test_differences_one_two_three_by_hand() -> None:
    # a − b = [1, 2, 3]: mean 2, sd 1, t(0.975, 2) = 4.302653, interval 2 ± 4.302653/√3 = 2 ± 2.484138
    s = paired_stats([3.0, 4.0, 5.0], [2.0, 2.0, 2.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(2.0) and s["sd"] == pytest.approx(1.0)
    assert s["lo"] == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-6)
    assert s["hi"] == pytest.approx(2 + 4.302653 / math.sqrt(3), abs=1e-6)
    # t = 2 / (1/√3) = 2√3; two degrees of freedom: p = 1 − t/√(t² + 2) = 1 − √12/√14 = 0.0741799
    assert s["t"] == pytest.approx(2 * math.sqrt(3))
    assert s["p"] == pytest.approx(1 - math.sqrt(12 / 14), abs=1e-9) == pytest.approx(0.0741799, abs=1e-7)
    assert s["verdict"] == "tie"  # the interval [−0.48, +4.48] holds 0


def test_two_seeds_one_degree_of_freedom() -> None:
    # a − b = [1, 3]: mean 2, sd √2, t = 2/(√2/√2) = 2; t(0.975, 1) = 12.706205, interval 2 ± 12.706205
    s = paired_stats([11.0, 13.0], [10.0, 10.0])
    assert (s["mean"], s["sd"]) == pytest.approx((2.0, math.sqrt(2)))
    assert (s["lo"], s["hi"]) == pytest.approx((2 - 12.706205, 2 + 12.706205), abs=1e-6)
    assert s["p"] == pytest.approx(1 - 2 / math.pi * math.atan(2), abs=1e-9)  # 0.2951672


def test_t_statistic_and_p_against_the_formula() -> None:
    a = [71.2, 68.4, 75.0, 70.1]
    b = [69.0, 68.9, 72.5, 67.7]
    d = [x - y for x, y in zip(a, b)]  # 2.2, −0.5, 2.5, 2.4
    t = statistics.mean(d) / (statistics.stdev(d) / math.sqrt(len(d)))
    s = paired_stats(a, b)
    assert s["t"] == pytest.approx(t)
    assert s["p"] == pytest.approx(_p_two_sided(t, 3), abs=1e-9)
    assert s["sd"] == pytest.approx(statistics.stdev(d))
    assert s["hi"] - s["mean"] == pytest.approx(3.182446 * statistics.stdev(d) / 2, abs=1e-6)  # t(0.975, 3) = 3.182446


def test_verdicts_follow_the_interval() -> None:
    # a − b = [2, 3, 4]: 3 ± 2.484 lies above 0; the reverse lies below
    assert paired_stats([2.0, 3.0, 4.0], [0.0, 0.0, 0.0])["verdict"] == "win"
    assert paired_stats([0.0, 0.0, 0.0], [2.0, 3.0, 4.0])["verdict"] == "loss"
    # identical differences: the interval is the point, p 0; all zero: p 1, tie
    same = paired_stats([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])
    assert (same["lo"], same["hi"], same["p"], same["verdict"]) == (1.0, 1.0, 0.0, "win")
    zero = paired_stats([1.0, 2.0], [1.0, 2.0])
    assert (zero["p"], zero["verdict"]) == (1.0, "tie")


def test_fewer_than_two_pairs_is_not_tested() -> None:
    one = paired_stats([5.0], [3.0])
    assert (one["n"], one["mean"], one["lo"], one["p"], one["verdict"]) == (1, 2.0, None, None, "n/a")
    assert paired_stats([], [])["verdict"] == "n/a"
    assert format_comparison(one) == "n/a"
    with pytest.raises(ValueError):
        paired_stats([1.0, 2.0], [1.0])


def test_pairing_keeps_only_shared_seeds() -> None:
    seeds, a, b = pair_by_seed({0: 50.0, 1: 60.0, 3: 70.0}, {3: 65.0, 0: 40.0, 2: 10.0})
    assert (seeds, a, b) == ([0, 3], [50.0, 70.0], [40.0, 65.0])


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 -> non-decreasing 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_cells() -> None:
    s = {"n": 3, "mean": 1.84, "lo": 0.91, "hi": 2.74, "p": 0.0041, "verdict": "win"}
    assert format_comparison(s) == "+1.8 [+0.9, +2.7] p=0.004 win"
    assert format_comparison({**s, "mean": -1.0, "lo": -2.0, "hi": -0.5, "p": 0.0002, "verdict": "loss"}) == \
        "-1.0 [-2.0, -0.5] p<0.001 loss"
    # sample standard deviation (ddof = 1): [30, 50] -> sd √200 = 14.14
    assert mean_sd([30.0, 50.0]) == "40.0 ± 14.1"
    assert mean_sd([30.0]) == "30.0 ± n/a"
