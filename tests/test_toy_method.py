"""A new method is one new file: this module defines a toy method ("every client trains the last k
blocks it can hold") with a knob of its own and a client step after local training, registers it
and runs it through the real ServerApp and ClientApp without touching any other file of the project."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from pydantic import Field
from safetensors.torch import load_file

from app_helpers import TINY_RUN, initial_global_state
from fedra_core.allocation import validate_capacities
from fedra_core.methods import LocalRound, Method, MethodConfig, register_method, unregister_method
from fedra_core.run_config import ConfigError, load_run_config
from runners.local import run_local
from server_app.outputs import read_metrics


class LastKConfig(MethodConfig):
    """lastk-zero-head-bias: the client step sets the trained head's bias to zero."""

    zero_head_bias: bool = Field(False, alias="lastk-zero-head-bias")


class LastK(Method):
    """Every client holds the last k blocks, k its capacity; optionally zeroes its head's bias after training."""

    name = "lastk"
    summary = "every client trains the last k blocks it can hold"
    config_class = LastKConfig
    client_step = "zero-bias"

    def after_local_training(self, job: LocalRound):
        if not self.config.zero_head_bias:
            return None
        return {"head.bias": torch.zeros_like(job.state["head.bias"])}

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
    unregister_method(LastK.name)  # leave the registry as the other tests expect it


def test_a_methods_knob_is_validated_by_its_config_and_refused_for_another_method(lastk):
    assert load_run_config({"method": "lastk", "lastk-zero-head-bias": True}).build_method().config.zero_head_bias is True
    assert load_run_config({"method": "lastk"}).method_config == LastKConfig()
    with pytest.raises(ConfigError, match="config key 'lastk-zero-head-bias' = 'maybe': Input should be a valid boolean"):
        load_run_config({"method": "lastk", "lastk-zero-head-bias": "maybe"})
    with pytest.raises(ConfigError, match="'lastk-zero-head-bias' = True is an option of method 'lastk'; method 'fedra' does not use it"):
        load_run_config({"method": "fedra", "lastk-zero-head-bias": True})


def test_a_knob_of_an_unregistered_method_is_an_unknown_key(lastk):
    unregister_method("lastk")
    with pytest.raises(ConfigError, match="unknown config key 'lastk-zero-head-bias'"):
        load_run_config({"lastk-zero-head-bias": True})
    register_method(LastK)


@pytest.mark.slow
@pytest.mark.parametrize("zero_bias", [False, True])
def test_toy_method_runs_through_the_apps(lastk, tmp_path, zero_bias):
    run_config = {**TINY_RUN, "method": "lastk", "capacities": "6,3,3", "num-server-rounds": 2,
                  "output-dir": str(tmp_path), "run-name": "toy", "lastk-zero-head-bias": zero_bias}
    run_dir = run_local(run_config, 3)
    records = read_metrics(run_dir)
    last6, last3 = [0] * 6 + [1] * 6, [0] * 9 + [1] * 3
    for r in records[1:]:
        assert r["allocation"] == [last6, last3, last3] and r["accepted"] == r["node-ids"]
        assert [("zero-bias" in t) for t in r["train-timings"].values()] == [zero_bias] * 3, r["train-timings"]
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
    # the client step ran on every client (its time is reported) and zeroed the bias it sent back:
    # the per-key mean over the clients is then exactly zero; without the step the bias trains
    head_bias = load_file(run_dir / "adapter" / "adapter_model.safetensors")["base_model.model.head.bias"]
    assert torch.count_nonzero(head_bias).item() == (0 if zero_bias else head_bias.numel())


def test_unregistered_method_is_a_config_error():
    from fedra_core.run_config import ConfigError, load_run_config

    with pytest.raises(ConfigError, match="config key 'method' = 'lastk': unknown method: allowed"):
        load_run_config({"method": "lastk"})
