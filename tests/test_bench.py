"""Fast checks of the benchmark scripts' own arithmetic and set-up (the benchmarks themselves are run
by hand, see docs/RESULTS.md): analytic wire sizes against hand-counted ViT-B/16 and Mixer-B/16
shapes, the capacity-to-domain assignment of the accuracy benchmark, and its mean/spread tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import accuracy, wire_bytes
from fedra_core.demo.digits import DIGITS_DOMAINS
from fedra_core.run_config import load_run_config


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


def test_capacity_assignment_both_ways(tmp_path: Path) -> None:
    # DIGITS_DOMAINS order: mnist, optdigits, mnistm, printed, usps, housenum.
    # Easy to hard: mnist 12, usps 10, optdigits 8, mnistm 6, printed 4, housenum 3.
    easy = accuracy.run_config("feature", "rich-easy", "fedra", 0, DIGITS_DOMAINS, tmp_path)
    assert easy["capacities"] == "12,8,6,4,10,3"
    # Reversed: housenum 12, printed 10, mnistm 8, optdigits 6, usps 4, mnist 3.
    hard = accuracy.run_config("feature", "rich-hard", "fedra", 0, DIGITS_DOMAINS, tmp_path)
    assert hard["capacities"] == "3,6,8,10,4,12"
    extreme = accuracy.run_config("extreme", "rich-easy", "fedra", 0, DIGITS_DOMAINS, tmp_path)
    assert max(int(c) for c in extreme["capacities"].split(",")) < 12


@pytest.mark.parametrize("setting", list(accuracy.SETTINGS))
def test_every_benchmark_config_is_a_valid_run_config(setting: str, tmp_path: Path) -> None:
    for assignment in ("rich-easy", "rich-hard"):
        for method in accuracy.METHODS:
            cfg = accuracy.run_config(setting, assignment, method, 1, DIGITS_DOMAINS, tmp_path,
                                      {"num-server-rounds": 30, "lr": 0.1})
            parsed = load_run_config(cfg)
            assert parsed.num_server_rounds == 30 and parsed.method == method
            assert cfg["run-name"] == f"{setting}-{assignment}-{method}-s1-r30-lr0.1"


def test_variant_suffix_names_only_departures() -> None:
    assert accuracy.variant_suffix({"num-server-rounds": 10, "lr": 0.05}) == ""
    assert accuracy.variant_suffix({"num-server-rounds": 30, "lr": 0.05}) == "-r30"


def test_summary_mean_spread_and_paired_gap(tmp_path: Path) -> None:
    domains = ("a", "b")
    runs = {}
    # final accuracies (a, b) per seed: FedRA (0.5, 0.1) and (0.7, 0.3); ALLlarge (0.4, 0.3) and (0.5, 0.3)
    finals = {"fedra": ((0.5, 0.1), (0.7, 0.3)), "alllarge": ((0.4, 0.3), (0.5, 0.3))}
    for method, per_seed in finals.items():
        for seed, (fa, fb) in enumerate(per_seed):
            run_dir = tmp_path / f"{method}-s{seed}"
            run_dir.mkdir()
            recs = [{"round": 0, "accuracy": {"a": 0.1, "b": 0.1}, "average": 0.1},
                    {"round": 1, "seconds": 1.0},
                    {"round": 2, "accuracy": {"a": fa, "b": fb}, "average": (fa + fb) / 2}]
            (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
            runs[("feature", "rich-easy", method, seed)] = run_dir
    summary = accuracy.summarise(runs, domains)
    table = accuracy.print_tables(summary, domains)
    # FedRA: a 60.0 ± 10.0 (population std), b 20.0 ± 10.0, average (30, 50) 40.0 ± 10.0
    assert "| fedra | 60.0 ± 10.0 | 20.0 ± 10.0 | 40.0 ± 10.0 |  |" in table
    # ALLlarge averages (35, 40); FedRA minus ALLlarge per seed (-5, +10): +2.5 ± 7.5
    assert "| alllarge | 45.0 ± 5.0 | 30.0 ± 0.0 | 37.5 ± 2.5 | +2.5 ± 7.5 |" in table
    assert "| untuned (round 0) | 10.0 ± 0.0 | 10.0 ± 0.0 | 10.0 ± 0.0 |  |" in table
    assert summary["feature"]["rich-easy"]["_curves"]["fedra"] == {0: [10.0, 10.0], 2: [30.0, 50.0]}


@pytest.mark.slow
def test_head_probe_rebuilds_the_runs_final_model(tmp_path: Path) -> None:
    from app_helpers import NODES, TINY_RUN
    from bench.head_probe import probe
    from client_app.app import app as client_app
    from server_app.app import run_federation
    from runners.local import InProcessGrid

    run_config = {**TINY_RUN, "output-dir": str(tmp_path), "run-name": "run", "num-server-rounds": 2}
    run_dir = run_federation(InProcessGrid(client_app, NODES, run_config), run_config)
    logged = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["accuracy"]
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
    model = model_with_state(backbone, range(12), state, cfg.lora(), cfg.build_method())
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
