"""Fast checks of the benchmark scripts' own arithmetic and set-up (the benchmarks themselves are run
by hand, see docs/RESULTS.md): analytic wire sizes against hand-counted ViT-B/16 and Mixer-B/16
shapes, the accuracy benchmark's variants, capacity assignments, shared runs, reuse check and tables
(its statistics by hand are in test_bench_stats.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import accuracy, wire_bytes
from fedra_core.data.digits import DIGITS_DOMAINS
from fedra_core.run_config import load_run_config
from server_app.outputs import read_metrics


def test_analytic_bytes_by_hand() -> None:
    # ViT-B/16, rank 8 on attn.proj (768->768) and mlp.fc2 (3072->768): 8*1536 + 8*3840 = 43,008
    # per block; head 100x768 + 100 and final LayerNorm 2x768 = 78,436 shared; float32.
    assert wire_bytes.analytic_bytes("vit_base_patch16_224", 12, 8, 100) == 4 * (12 * 43_008 + 78_436)
    assert wire_bytes.analytic_bytes("vit_base_patch16_224", 3, 8, 100) == 4 * (3 * 43_008 + 78_436)
    # Mixer-B/16: mlp_tokens.fc2 (384->196) and mlp_channels.fc2 (3072->768): 8*580 + 8*3840 = 35,360.
    assert wire_bytes.analytic_bytes("mixer_b16_224", 12, 8, 100) == 4 * (12 * 35_360 + 78_436)


def test_whole_block_counts_match_vit_b16_by_hand() -> None:
    counts = wire_bytes.param_counts("vit_base_patch16_224", 100)
    # qkv 768x2304 + 2304, proj 768x768 + 768, fc1 768x3072 + 3072, fc2 3072x768 + 768, two LayerNorms
    per_block = (768 * 2304 + 2304) + (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768) + 4 * 768
    assert counts.per_block == [per_block] * 12
    # patch embedding (16x16x3 -> 768, with bias), class token, 197 position embeddings
    assert counts.embedding == 16 * 16 * 3 * 768 + 768 + 768 + 197 * 768
    assert (counts.norm, counts.head) == (2 * 768, 100 * 768 + 100)


def test_capacity_assignments(tmp_path: Path) -> None:
    # DIGITS_DOMAINS order: mnist, optdigits, mnistm, printed, usps, housenum.
    # paper: the capacities in that order, as the reference code's --net_type for DomainNet's list.
    paper = accuracy.run_config("feature", "paper", "fedra", 0, DIGITS_DOMAINS, tmp_path)
    assert paper["capacities"] == "12,10,8,6,4,3"
    # Easy to hard: mnist 12, usps 10, optdigits 8, mnistm 6, printed 4, housenum 3.
    easy = accuracy.run_config("feature", "rich-easy", "fedra", 0, DIGITS_DOMAINS, tmp_path)
    assert easy["capacities"] == "12,8,6,4,10,3"
    # Reversed: housenum 12, printed 10, mnistm 8, optdigits 6, usps 4, mnist 3.
    hard = accuracy.run_config("feature", "rich-hard", "fedra", 0, DIGITS_DOMAINS, tmp_path)
    assert hard["capacities"] == "3,6,8,10,4,12"
    assert accuracy.capacity_map("feature", "rich-hard", DIGITS_DOMAINS)["housenum"] == 12
    extreme = accuracy.run_config("extreme", "paper", "fedra", 0, DIGITS_DOMAINS, tmp_path)
    assert extreme["capacities"] == "6,6,4,4,3,3"
    # ALLlarge and ALLsmall ignore the assignment: one run, named "any", with the paper capacities
    for assignment in accuracy.ASSIGNMENTS:
        shared = accuracy.run_config("feature", assignment, "alllarge-legacy-lora", 2, DIGITS_DOMAINS, tmp_path)
        assert shared["run-name"] == "feature-any-alllarge-legacy-lora-s2" and shared["capacities"] == "12,10,8,6,4,3"


def test_variants_cover_every_method_and_the_options() -> None:
    for method in accuracy.METHODS:
        assert accuracy.VARIANTS[method] == (method, {})
    assert accuracy.VARIANTS["fedra-calib-last"] == ("fedra", {"head-calibration-steps": 8, "allocation": "last"})
    assert accuracy.VARIANTS["alllarge-legacy-lora"].overrides == {"lora-targets": "attn.proj,mlp.fc2", "train-norm": True}
    assert set(accuracy.DEFAULT_ROWS) <= set(accuracy.VARIANTS)


@pytest.mark.parametrize("setting", list(accuracy.SETTINGS))
def test_every_benchmark_config_is_a_valid_run_config(setting: str, tmp_path: Path) -> None:
    from fedra_core.run_config import RunConfig

    known = set(RunConfig.all_keys())
    for assignment in accuracy.ASSIGNMENTS:
        for row, variant in accuracy.VARIANTS.items():
            cfg = accuracy.run_config(setting, assignment, row, 1, DIGITS_DOMAINS, tmp_path,
                                      {"num-server-rounds": 10, "lr": 0.1}, tag="full")
            shared = variant.method in ("alllarge", "allsmall")
            made_as = "feature" if shared and setting == "extreme" else setting
            assert cfg["run-name"] == f"{made_as}-{'any' if shared else assignment}-{row}-s1-r10-lr0.1-full"
            assert cfg["method"] == variant.method and variant.overrides.items() <= cfg.items()
            if set(variant.overrides) <= known:  # options whose keys the run config does not know yet are skipped
                parsed = load_run_config(cfg)
                assert parsed.num_server_rounds == 10 and parsed.method == variant.method


def test_schedule_suffix_names_only_departures() -> None:
    assert accuracy.schedule_suffix({"num-server-rounds": 30, "lr": 0.05, "local-steps": 8}) == ""
    assert accuracy.schedule_suffix({"num-server-rounds": 10, "lr": 0.05}) == "-r10"
    assert accuracy.schedule_suffix({"lr": 0.1, "local-steps": 16}) == "-lr0.1-ls16"
    with pytest.raises(ValueError):
        accuracy.schedule_suffix({"batch-size": 32})


def test_shared_rows_run_once_for_every_assignment(tmp_path: Path) -> None:
    configs, cells = accuracy.plan_runs(["feature"], ["paper", "rich-hard"], ["fedra", "alllarge", "allsmall"], [0, 1],
                                        DIGITS_DOMAINS, tmp_path, weights="w.safetensors", tag="t")
    assert len(configs) == 2 * 2 + 2 + 2 and len(cells) == 2 * 3 * 2
    assert cells[("feature", "paper", "alllarge", 0)] == cells[("feature", "rich-hard", "alllarge", 0)] == "feature-any-alllarge-s0-t"
    assert cells[("feature", "rich-hard", "fedra", 1)] == "feature-rich-hard-fedra-s1-t"
    assert all(cfg["backbone-weights"] == "w.safetensors" for cfg in configs.values())


def test_extreme_shows_the_feature_settings_alllarge_and_allsmall_runs(tmp_path: Path) -> None:
    # extreme differs from feature only in capacities 6, 6, 4, 4, 3, 3 (smallest 3 in both): the
    # capacity-blind rows are the same federations; feature-label has other data, so its own runs
    configs, cells = accuracy.plan_runs(["feature", "feature-label", "extreme"], ["paper"], ["fedra", "alllarge", "allsmall"],
                                        [0], DIGITS_DOMAINS, tmp_path)
    assert cells[("extreme", "paper", "alllarge", 0)] == cells[("feature", "paper", "alllarge", 0)] == "feature-any-alllarge-s0"
    assert cells[("extreme", "paper", "allsmall", 0)] == "feature-any-allsmall-s0"
    assert cells[("feature-label", "paper", "alllarge", 0)] == "feature-label-any-alllarge-s0"
    assert cells[("extreme", "paper", "fedra", 0)] == "extreme-paper-fedra-s0"
    assert configs["extreme-paper-fedra-s0"]["capacities"] == "6,6,4,4,3,3"
    assert configs["feature-any-alllarge-s0"]["capacities"] == "12,10,8,6,4,3"
    assert len(configs) == 3 + 2 + 2


def test_finished_runs_are_reused_only_with_the_same_config(tmp_path: Path) -> None:
    cfg = accuracy.run_config("feature-label", "paper", "depthfl-ref-ramp", 0, DIGITS_DOMAINS, tmp_path)
    saved = load_run_config(cfg).as_dict()  # what the server writes to config.json
    assert accuracy.stale_keys(cfg, saved) == []
    assert accuracy.stale_keys(cfg, {**saved, "num-server-rounds": 10}) == ["num-server-rounds"]
    run_dir = tmp_path / cfg["run-name"]
    run_dir.mkdir()
    (run_dir / "summary.md").write_text("done")
    (run_dir / "config.json").write_text(json.dumps(saved))
    assert accuracy._run_one(cfg, 18) == run_dir
    (run_dir / "config.json").write_text(json.dumps({**saved, "lr": 0.1}))
    with pytest.raises(RuntimeError, match="lr"):
        accuracy._run_one(cfg, 18)


def _write_run(run_dir: Path, finals: dict[str, float], round0: float = 0.1, last: int = 2) -> None:
    run_dir.mkdir(parents=True)
    average = sum(finals.values()) / len(finals)
    recs = [{"round": 0, "accuracy": {d: round0 for d in finals}, "average": round0},
            {"round": 1, "seconds": 1.0},
            {"round": last, "accuracy": finals, "average": average}]
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    (run_dir / "summary.md").write_text("done")


def test_summary_sample_spread_and_paired_comparison(tmp_path: Path) -> None:
    domains = ("a", "b")
    runs = {}
    # final accuracies (a, b) per seed: FedRA (0.5, 0.1) and (0.7, 0.3); ALLlarge (0.4, 0.3) and (0.5, 0.3)
    finals = {"fedra": ((0.5, 0.1), (0.7, 0.3)), "alllarge": ((0.4, 0.3), (0.5, 0.3))}
    for method, per_seed in finals.items():
        for seed, (fa, fb) in enumerate(per_seed):
            run_dir = tmp_path / f"{method}-s{seed}"
            # another round-0 figure for ALLlarge: the untuned row must take the first plain row's (FedRA)
            _write_run(run_dir, {"a": fa, "b": fb}, round0=0.1 if method == "fedra" else 0.2)
            runs[("feature", "paper", method, seed)] = run_dir
    summary = accuracy.summarise(runs, domains)
    stats = accuracy.compute_stats(summary, ["fedra", accuracy.BEST_OPTION])
    table = accuracy.print_tables(summary, domains, stats)
    # FedRA: a (50, 70) 60.0 ± 14.1 (sample sd √200), b (10, 30) 20.0 ± 14.1, average (30, 50) 40.0 ± 14.1
    assert "| fedra | 60.0 ± 14.1 | 20.0 ± 14.1 | 40.0 ± 14.1 | 2 | — |" in table
    # ALLlarge averages (35, 40); FedRA minus ALLlarge per seed (−5, +10): mean 2.5, sd 7.5√2, one degree
    # of freedom: 2.5 ± 12.706205·7.5 = [−92.8, +97.8]; t = 1/3, p = 1 − (2/π)·atan(1/3) = 0.795
    assert "| alllarge | 45.0 ± 7.1 | 30.0 ± 0.0 | 37.5 ± 3.5 | 2 | +2.5 [-92.8, +97.8] p=0.795 tie |" in table
    # the untuned row comes first and is FedRA's round 0 (the first plain row), not ALLlarge's
    assert "| untuned (round 0) | 10.0 ± 0.0 | 10.0 ± 0.0 | 10.0 ± 0.0 | 2 |  |" in table
    assert table.index("untuned (round 0)") < table.index("| fedra |")
    assert summary["feature"]["paper"]["curves"]["fedra"] == {0: [10.0, 10.0], 2: [30.0, 50.0]}
    assert summary["feature"]["paper"]["rows"]["alllarge"]["seeds"] == [0, 1]
    assert stats["total"] == 1 and stats["per_table"] == {"feature/paper": 1}
    assert "1 paired comparisons in this table" in table and "No multiple-comparison correction" in table


def test_main_end_to_end_on_fake_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[str] = []
    level = {"fedra": 0.60, "alllarge": 0.70, "fedra-calib": 0.64, "fedra-last": 0.62}

    def fake_run(cfg: dict, nodes: int) -> Path:
        made.append(cfg["run-name"])
        seed = cfg["seed"]
        row = next(r for r in sorted(level, key=len, reverse=True) if f"-{r}-s{seed}-" in cfg["run-name"])
        run_dir = Path(cfg["output-dir"]) / cfg["run-name"]
        _write_run(run_dir, {d: level[row] + 0.01 * seed + 0.003 * (seed * seed % 3) * (row == "fedra")
                             for d in DIGITS_DOMAINS}, last=cfg["num-server-rounds"])
        return run_dir

    monkeypatch.setattr(accuracy, "_run_one", fake_run)
    rc = accuracy.main(["--settings", "feature", "--rows", "fedra", "alllarge", "fedra-calib", "fedra-last",
                        "--seeds", "0", "1", "2", "--jobs", "1", "--out", str(tmp_path / "runs"),
                        "--results-dir", str(tmp_path), "--rounds", "4", "--tag", "full"])
    assert rc == 0
    # ALLlarge ran once per seed for both default assignments
    assert sorted(n for n in made if "alllarge" in n) == [f"feature-any-alllarge-s{s}-r4-full" for s in range(3)]
    assert len(made) == 3 * (2 * 3 + 1)
    result = json.loads((tmp_path / "accuracy-feature-r4-full.json").read_text())
    assert (tmp_path / "accuracy-feature-r4-full.png").is_file()
    assert result["rows"]["fedra-last"] == {"method": "fedra", "overrides": {"allocation": "last"}}
    assert result["capacities"]["feature"]["rich-hard"]["housenum"] == 12
    paper = result["summary"]["feature"]["paper"]["rows"]
    assert list(paper) == ["untuned (round 0)", "fedra", "alllarge", "fedra-last", "fedra-calib"]  # VARIANTS order
    assert paper["alllarge"]["runs"] == [f"feature-any-alllarge-s{s}-r4-full" for s in range(3)]
    # references fedra and the best option (fedra-calib, 64 % against 62 %): 3 + 2 comparisons per table
    assert result["stats"]["tables"]["feature"]["paper"]["references"] == ["fedra", "fedra-calib"]
    assert result["stats"]["per_table"] == {"feature/paper": 5, "feature/rich-hard": 5} and result["stats"]["total"] == 10
    assert all("p_holm" in c for c in result["stats"]["tables"]["feature"]["paper"]["comparisons"])
    # ALLlarge is 10 points above FedRA on every seed up to 0.6 points: a clear loss for FedRA
    by_row = {(c["reference"], c["row"]): c for c in result["stats"]["tables"]["feature"]["paper"]["comparisons"]}
    assert by_row[("fedra", "alllarge")]["verdict"] == "loss" and by_row[("fedra-calib", "alllarge")]["verdict"] == "loss"
    assert result["seconds"] >= 0 and result["tag"] == "full"


@pytest.mark.slow
def test_head_probe_rebuilds_the_runs_final_model(tmp_path: Path) -> None:
    from app_helpers import NODES, TINY_RUN
    from bench.head_probe import probe
    from runners.local import local_federation

    run_config = {**TINY_RUN, "output-dir": str(tmp_path), "run-name": "run", "num-server-rounds": 2}
    run_dir, _ = local_federation(run_config, NODES)
    logged = read_metrics(run_dir)[-1]["accuracy"]
    result = probe(run_dir, steps=3, seed=0)
    # the server's own evaluation after the last round, reproduced from the checkpoint
    assert result["before"] == pytest.approx({d: 100 * a for d, a in logged.items()})
    # "after": the checkpoint's model with the re-fitted head, evaluated here by hand on every domain
    import torch

    from fedra_core.backbones import resolve_backbone
    from fedra_core.data.federation import test_sets
    from fedra_core.evaluation import model_with_state
    from fedra_core.run_config import load_run_config
    from server_app.checkpoint import load_checkpoint

    cfg = load_run_config(run_config)
    backbone = resolve_backbone(cfg.backbone_spec())
    state = {**load_checkpoint(run_dir / "checkpoint.safetensors").global_state,
             **{f"head.{k}": v for k, v in result["_head"].items()}}
    model = model_with_state(cfg.recipe(backbone), range(12), state)
    by_hand = {}
    with torch.no_grad():
        for domain, data in test_sets(cfg.data_spec(), cfg.eval_max_examples).items():
            images, labels = zip(*[data[i] for i in range(len(data))])
            by_hand[domain] = 100 * float((model(torch.stack(images)).argmax(1) == torch.tensor(labels)).float().mean())
    assert result["after"] == pytest.approx(by_hand)
    assert not torch.equal(result["_head"]["weight"], load_checkpoint(run_dir / "checkpoint.safetensors").global_state["head.weight"])


def test_results_carry_no_machine_paths() -> None:
    import tempfile

    from bench._common import REPO, portable

    payload = {"cmd": [f"{REPO}/.venv/bin/python", "-m", "x"], "out": f"{tempfile.gettempdir()}/run-1/a", "n": 3}
    assert portable(payload) == {"cmd": ["./.venv/bin/python", "-m", "x"], "out": "$TMPDIR/run-1/a", "n": 3}
