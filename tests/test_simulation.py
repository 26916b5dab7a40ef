"""A real `flwr run` on Flower's simulation engine (Ray), through the project's launcher."""

from __future__ import annotations


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
