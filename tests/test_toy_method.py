"""A new method is one new file: this module defines a toy method ("every client trains the last k
blocks it can hold"), registers it and runs it through the real ServerApp and ClientApp without
touching any other file of the project."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from app_helpers import TINY_RUN, initial_global_state
from fedra_core.allocation import validate_capacities
from fedra_core.methods import Method, register_method
from fedra_core.methods.registry import METHODS
from runners.local import run_local


class LastK(Method):
    """Every client holds the last k blocks, k its capacity."""

    name = "lastk"
    summary = "every client trains the last k blocks it can hold"

    def allocate(self, capacities, num_layers, rng):
        caps = validate_capacities(capacities, num_layers)
        alloc = np.zeros((len(caps), num_layers), dtype=bool)
        for i, k in enumerate(caps):
            alloc[i, num_layers - k:] = True
        return alloc


@pytest.fixture
def lastk():
    register_method(LastK)
    yield LastK
    METHODS.pop(LastK.name)  # leave the registry as the other tests expect it


@pytest.mark.slow
def test_toy_method_runs_through_the_apps(lastk, tmp_path):
    run_config = {**TINY_RUN, "method": "lastk", "capacities": "6,3,3", "num-server-rounds": 2,
                  "output-dir": str(tmp_path), "run-name": "toy"}
    run_dir = run_local(run_config, 3)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last6, last3 = [0] * 6 + [1] * 6, [0] * 9 + [1] * 3
    for r in records[1:]:
        assert r["allocation"] == [last6, last3, last3] and r["accepted"] == r["node-ids"]
    # blocks 0..5 were never held: their adapters are the initial ones; block 11 was trained
    initial = initial_global_state(run_config)
    adapter = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    for key, value in initial.items():
        if "lora_" not in key:
            continue
        got = adapter["base_model.model." + key]
        if not key.startswith("blocks."):  # the patch embedding's adapter is shared: every client trains it
            assert "lora_A" in key or not torch.equal(got, value), key
            continue
        block = int(key.split(".")[1])
        if block < 6:
            assert torch.equal(got, value), key
        elif block == 11 and "lora_B" in key:
            assert not torch.equal(got, value), key


def test_unregistered_method_is_a_config_error():
    from fedra_core.run_config import ConfigError, load_run_config

    with pytest.raises(ConfigError, match="config key 'method' = 'lastk': unknown method: allowed"):
        load_run_config({"method": "lastk"})
