"""The accuracy benchmark's statistics against values worked by hand (not against scipy alone): paired
mean, sample standard deviation, t interval, t-test p value (closed-form t distributions for 1, 2 and
3 degrees of freedom), verdicts, pairing by seed, Holm's adjustment (p values and intervals) and the
table cells."""

from __future__ import annotations

import math
import statistics

import pytest

from bench.accuracy import (format_comparison, format_holm, holm, holm_adjust, holm_levels, mean_sd, pair_by_seed,
                            paired_stats)


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


def test_holm_adjusted_intervals_by_hand() -> None:
    from scipy.stats import t as student

    # a family of three paired comparisons over 5 seeds (4 degrees of freedom), reference − row per seed:
    # A = [−1, −2, −3, −4, −5] (the row beats the reference: an ALLlarge gap), B = [0.5, 1.5, 1, 2, 0],
    # C = [−1, 2, 0, 3, 1].
    # A: mean −3, sd √2.5, se √2.5/√5 = 0.7071068, t −4.2426407, p 0.0132356
    # B: mean 1, sd √0.625, se 0.3535534, t 2.8284271, p 0.0474207
    # C: mean 1, sd √2.5, se 0.7071068, t 1.4142136, p 0.2301996
    zeros = [0.0] * 5
    a = paired_stats(zeros, [1.0, 2.0, 3.0, 4.0, 5.0])
    b = paired_stats([0.5, 1.5, 1.0, 2.0, 0.0], zeros)
    c = paired_stats([-1.0, 2.0, 0.0, 3.0, 1.0], zeros)
    for s, p in ((a, 0.0132356), (b, 0.0474207), (c, 0.2301996)):
        assert s["p"] == pytest.approx(p, abs=1e-7)
        assert s["p"] == pytest.approx(2 * student.sf(abs(s["mean"]) / (s["sd"] / math.sqrt(5)), 4))
    family = [{"reference": "fedra", "row": r, **s} for r, s in (("depthfl", b), ("alllarge", a), ("inclusivefl", c))]
    holm_adjust(family)
    bf, af, cf = family
    # ranks by p: A 1st, B 2nd, C 3rd of m = 3 -> levels 1 − 0.05/3, 1 − 0.05/2, 1 − 0.05/1
    assert [af["level_holm"], bf["level_holm"], cf["level_holm"]] == pytest.approx([1 - 0.05 / 3, 0.975, 0.95])
    assert holm_levels([0.2, 0.01, 0.04]) == pytest.approx([0.95, 1 - 0.05 / 3, 0.975])
    # p_holm: 3·0.0132356 = 0.0397068; max(that, 2·0.0474207 = 0.0948413); max(that, 0.2301996)
    assert [af["p_holm"], bf["p_holm"], cf["p_holm"]] == pytest.approx([0.0397068, 0.0948413, 0.2301996], abs=1e-6)
    # A: −3 ∓ t(1 − 0.05/6, 4)·0.7071068 = −3 ∓ 3.9607865·0.7071068 = −3 ∓ 2.8007 = [−5.8007, −0.1993]: below 0, a loss
    q = student.ppf(1 - 0.05 / 6, 4)
    assert q == pytest.approx(3.9607865, abs=1e-6)
    assert (af["lo_holm"], af["hi_holm"]) == pytest.approx((-3 - q * math.sqrt(0.5), -3 + q * math.sqrt(0.5)))
    assert (af["lo_holm"], af["hi_holm"]) == pytest.approx((-5.800699, -0.199301), abs=1e-5)
    assert af["verdict_holm"] == "loss" and a["verdict"] == "loss"
    # B: 1 ∓ t(0.9875, 4)·0.3535534 = 1 ∓ 3.4954059·0.3535534 = [−0.2358, +2.2358]: a tie, though its
    # unadjusted 95 % interval 1 ∓ 2.7764451·0.3535534 = [+0.0184, +1.9816] lies above 0 (a win)
    assert student.ppf(0.9875, 4) == pytest.approx(3.4954059, abs=1e-6)
    assert (bf["lo_holm"], bf["hi_holm"]) == pytest.approx((-0.235813, 2.235813), abs=1e-5)
    assert (b["lo"], b["verdict"], bf["verdict_holm"]) == (pytest.approx(0.018378, abs=1e-5), "win", "tie")
    # C: the largest p keeps the 95 % interval, 1 ∓ 2.7764451·0.7071068 = [−0.9633, +2.9633]
    assert (cf["lo_holm"], cf["hi_holm"]) == pytest.approx((c["lo"], c["hi"]))
    assert (cf["lo_holm"], cf["hi_holm"]) == pytest.approx((-0.963243, 2.963243), abs=1e-5)
    assert cf["verdict_holm"] == "tie"
    assert format_holm(af) == "fedra − alllarge: -3.0 [-5.8, -0.2] (98.3 % interval) p_holm=0.040 loss"


def test_holm_verdict_is_step_down() -> None:
    # p 0.03 then 0.04 of m = 2: Holm stops at the first (2·0.03 = 0.06 >= 0.05), so the second is a tie
    # even though its own adjusted (95 %) interval, 3 ∓ 2.7764451·0.7071068 = [+1.04, +4.96], excludes 0
    first = {"mean": 1.0, "sd": 1.0, "n": 5, "p": 0.03}
    second = {"mean": 3.0, "sd": math.sqrt(2.5), "n": 5, "p": 0.04}
    holm_adjust([first, second])
    assert (first["p_holm"], second["p_holm"]) == pytest.approx((0.06, 0.06))
    assert second["level_holm"] == pytest.approx(0.95) and second["lo_holm"] == pytest.approx(1.036757, abs=1e-5)
    assert (first["verdict_holm"], second["verdict_holm"]) == ("tie", "tie")


def test_cells() -> None:
    s = {"n": 3, "mean": 1.84, "lo": 0.91, "hi": 2.74, "p": 0.0041, "verdict": "win"}
    assert format_comparison(s) == "+1.8 [+0.9, +2.7] p=0.004 win"
    assert format_comparison({**s, "mean": -1.0, "lo": -2.0, "hi": -0.5, "p": 0.0002, "verdict": "loss"}) == \
        "-1.0 [-2.0, -0.5] p<0.001 loss"
    # sample standard deviation (ddof = 1): [30, 50] -> sd √200 = 14.14
    assert mean_sd([30.0, 50.0]) == "40.0 ± 14.1"
    assert mean_sd([30.0]) == "30.0 ± n/a"


def test_family_tokens() -> None:
    from bench.accuracy import parse_family

    assert parse_family(["all"]) == "all" and parse_family(["table"]) == "table"
    assert parse_family(["fedra:depthfl", "alllarge:fedra-calib-last"]) == [("fedra", "depthfl"),
                                                                            ("alllarge", "fedra-calib-last")]
    for bad in (["fedra"], ["fedra:fedra"], ["fedra:nosuchrow"], ["fedra:depthfl", "depthfl:fedra"],
                ["all", "fedra:depthfl"], ["fedra:depthfl:alllarge"]):
        with pytest.raises(ValueError):
            parse_family(bad)


def test_family_must_be_compared() -> None:
    from bench.accuracy import check_family

    rows = ["fedra", "depthfl", "alllarge"]
    check_family([("depthfl", "fedra")], rows, ["fedra"])  # either order
    check_family("all", rows, ["fedra"])
    with pytest.raises(ValueError, match="not in --rows"):
        check_family([("fedra", "inclusivefl")], rows, ["fedra"])
    with pytest.raises(ValueError, match="neither row"):
        check_family([("depthfl", "alllarge")], rows, ["fedra", "best-option"])


def test_holm_over_a_stated_family_by_hand() -> None:
    from scipy.stats import t as student

    from bench.accuracy import compute_stats

    # FedRA averages 50 on every seed; reference − row per seed as in test_holm_adjusted_intervals_by_hand:
    # alllarge A = [−1, −2, −3, −4, −5] (p 0.0132356), depthfl B = [0.5, 1.5, 1, 2, 0] (p 0.0474207),
    # inclusivefl C = [−1, 2, 0, 3, 1] (p 0.2301996)
    diffs = {"depthfl": [0.5, 1.5, 1.0, 2.0, 0.0], "alllarge": [-1.0, -2.0, -3.0, -4.0, -5.0],
             "inclusivefl": [-1.0, 2.0, 0.0, 3.0, 1.0]}
    rows = {"fedra": {"seeds": list(range(5)), "average": [50.0] * 5},
            **{r: {"seeds": list(range(5)), "average": [50.0 - x for x in d]} for r, d in diffs.items()}}
    summary = {"feature": {"paper": {"rows": rows, "curves": {}}}}
    stats = compute_stats(summary, ["fedra"], [("fedra", "depthfl"), ("alllarge", "fedra")])
    by_row = {c["row"]: c for c in stats["tables"]["feature"]["paper"]["comparisons"]}
    assert stats["total"] == 3 and stats["families"] == {
        "family": ["feature/paper fedra − depthfl", "feature/paper fedra − alllarge"]}
    assert "p_holm" not in by_row["inclusivefl"] and "lo_holm" not in by_row["inclusivefl"]  # outside the family
    a, b = by_row["alllarge"], by_row["depthfl"]
    # m = 2: A ranked 1st at level 1 − 0.05/2, p_holm 2·0.0132356 = 0.0264712; B 2nd at 0.95,
    # p_holm max(0.0264712, 0.0474207) = 0.0474207
    assert (a["level_holm"], b["level_holm"]) == pytest.approx((0.975, 0.95))
    assert (a["p_holm"], b["p_holm"]) == pytest.approx((0.0264712, 0.0474207), abs=1e-6)
    # A: −3 ∓ t(0.9875, 4)·√0.5 = −3 ∓ 3.4954059·0.7071068 = [−5.471617, −0.528383]
    assert student.ppf(0.9875, 4) == pytest.approx(3.4954059, abs=1e-6)
    assert (a["lo_holm"], a["hi_holm"]) == pytest.approx((-5.471617, -0.528383), abs=1e-5)
    # B keeps its 95 % interval 1 ∓ 2.7764451·√0.125 = [+0.018373, +1.981627]: a win in this family of 2,
    # a tie in the family of 3 (test_holm_adjusted_intervals_by_hand)
    assert (b["lo_holm"], b["hi_holm"]) == pytest.approx((0.018373, 1.981627), abs=1e-5)
    assert (a["verdict_holm"], b["verdict_holm"]) == ("loss", "win")
    every = compute_stats(summary, ["fedra"])  # the default: every comparison of the command, m = 3
    assert [c["verdict_holm"] for c in every["tables"]["feature"]["paper"]["comparisons"]] == ["tie", "loss", "tie"]


def test_a_wrong_family_stops_before_any_run(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import accuracy

    def no_run(cfg: dict, nodes: int):
        raise AssertionError("a run started")

    monkeypatch.setattr(accuracy, "_run_one", no_run)
    with pytest.raises(SystemExit):
        accuracy.main(["--settings", "feature", "--rows", "fedra", "depthfl", "--reference", "fedra",
                       "--family", "fedra:alllarge", "--out", str(tmp_path), "--results-dir", str(tmp_path)])


def test_causal_lm_baselines_are_paired_with_fedra_by_seed_with_bonferroni_intervals():
    """Hand-worked: two baselines against FedRA over three seeds (df 2, where the t distribution has the
    closed form F(t) = 1/2 + t / (2 sqrt(t^2 + 2)))."""
    from bench.causal_lm_accuracy import compare_to_fedra

    nll = {"fedra": {0: 3.0, 1: 3.1, 2: 3.2}, "depthfl": {0: 4.0, 1: 4.3, 2: 4.2, 3: 9.9},
           "alllarge": {0: 2.5, 1: 2.7, 2: 2.6}}
    out = compare_to_fedra(nll)
    t_crit = lambda q: (2 * q - 1) * math.sqrt(2) / math.sqrt(1 - (2 * q - 1) ** 2)  # noqa: E731  df 2
    half = t_crit(1 - 0.05 / 2 / 2) / math.sqrt(3)  # two baselines: level 1 - 0.05/2
    depth, large = out["depthfl"], out["alllarge"]
    assert depth["seeds"] == [0, 1, 2] and depth["n"] == 3  # seed 3 has no FedRA run to pair with
    sd = math.sqrt(((1.0 - 16 / 15) ** 2 + (1.2 - 16 / 15) ** 2 + (1.0 - 16 / 15) ** 2) / 2)
    assert depth["mean"] == pytest.approx(16 / 15) and depth["sd"] == pytest.approx(sd)
    assert (depth["lo_bonf"], depth["hi_bonf"]) == pytest.approx((16 / 15 - half * sd, 16 / 15 + half * sd))
    assert depth["verdict"] == "FedRA better"
    assert large["mean"] == pytest.approx(-0.5) and large["sd"] == pytest.approx(0.1)
    assert large["hi_bonf"] == pytest.approx(-0.5 + half * 0.1) and large["verdict"] == "FedRA worse"
    p_depth, p_large = _p_two_sided(16 / 15 / (sd / math.sqrt(3)), 2), _p_two_sided(0.5 / (0.1 / math.sqrt(3)), 2)
    assert depth["p_holm"] == pytest.approx(2 * p_depth, rel=1e-6) and large["p_holm"] == pytest.approx(max(p_large, 2 * p_depth), rel=1e-6)
    one_seed = compare_to_fedra({"fedra": {0: 3.0}, "depthfl": {0: 4.0}})
    assert one_seed["depthfl"]["verdict"] == "n/a" and one_seed["depthfl"]["lo_bonf"] is None
