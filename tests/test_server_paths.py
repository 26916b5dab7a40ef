"""Server-side paths through the strategy and the apps: client sampling modes, DepthFL's
distillation weight in every training message, a capacity outside 1..L reported later, device and
precision settings (testable without a GPU)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedra_core.methods import get_method
from fedra_core.run_config import ConfigError
from server_app.strategy import FedRAStrategy, NodeInfo
from app_helpers import run_inprocess, train_messages
from server_app.outputs import read_metrics

DOMAINS = ["a", "a", "b", "b", "c", "c"]  # two nodes per domain


def _strategy(sampling: str, clients_per_round: int = 0) -> FedRAStrategy:
    strategy = FedRAStrategy(get_method("fedra"), num_layers=12, fingerprint="f", seed=3,
                             sampling=sampling, clients_per_round=clients_per_round)
    for i, domain in enumerate(DOMAINS):
        strategy.register(NodeInfo(100 + i, -1, 3, domain))
    return strategy


def _sent_to(strategy: FedRAStrategy, server_round: int) -> list[int]:
    state = {"blocks.0.x.lora_A.weight": torch.zeros(1), "head.bias": torch.zeros(1)}
    return [m.metadata.dst_node_id for m in strategy.configure_train(server_round, ArrayRecord(state), ConfigRecord(), None)]


def test_all_sends_to_every_node_in_order():
    assert _sent_to(_strategy("all"), 1) == [100, 101, 102, 103, 104, 105]


def test_per_domain_sends_to_one_node_of_each_domain_uniformly():
    strategy = _strategy("per-domain")
    counts: Counter = Counter()
    for r in range(1, 401):
        picked = _sent_to(strategy, r)
        assert [DOMAINS[n - 100] for n in picked] == ["a", "b", "c"]
        counts.update(picked)
        assert picked == _sent_to(strategy, r)  # (seed, round) decides: a resumed run draws the same
    assert all(150 <= counts[n] <= 250 for n in range(100, 106)), counts  # each about 200 of 400 times


def test_uniform_sends_to_clients_per_round_nodes_uniformly():
    strategy = _strategy("uniform", clients_per_round=4)
    counts: Counter = Counter()
    for r in range(1, 301):
        picked = _sent_to(strategy, r)
        assert len(picked) == 4 == len(set(picked)) and picked == sorted(picked)
        counts.update(picked)
    assert all(150 <= counts[n] <= 250 for n in range(100, 106)), counts  # each about 4/6 of 300 = 200


@pytest.mark.slow
def test_depthfl_distillation_weight_reaches_every_training_message(tmp_path):
    from fedra_core.methods.depthfl import consistency_weight

    _, grid, _ = run_inprocess(tmp_path, **{"method": "depthfl", "num-server-rounds": 2, "depthfl-ramp-rounds": 4})
    for r in (1, 2):
        weights = [float(m.content["config"]["distill-weight"]) for m in train_messages(grid, r)]
        assert weights == [pytest.approx(math.exp(-5 * (1 - r / 4) ** 2))] * 3  # by hand: exp(-5 (1 - r/R)^2)
        assert weights[0] == consistency_weight(r, 4)


@pytest.mark.slow
def test_capacity_outside_range_reported_later_is_ignored_and_logged(tmp_path, caplog):
    def claim_99(node_id, message, reply):
        if node_id != 102:
            return reply
        metrics = MetricRecord({**dict(reply.content["metrics"]), "capacity-layers": 99})
        return Message(RecordDict({"arrays": reply.content["arrays"], "metrics": metrics}), reply_to=message)

    import logging

    logger = logging.getLogger("fedra")
    logger.addHandler(caplog.handler)
    try:
        run_dir, _, _ = run_inprocess(tmp_path, intercept=claim_99, **{"num-server-rounds": 2})
    finally:
        logger.removeHandler(caplog.handler)
    records = read_metrics(run_dir)
    assert [r["capacities"] for r in records[1:]] == [[12, 6, 3], [12, 6, 3]]
    assert [r["accepted"] for r in records[1:]] == [[101, 102, 103]] * 2  # its update is still used
    assert "node 102: capacity-layers 99 is outside 1..12; keeping capacity 6" in caplog.text


@pytest.mark.parametrize(
    "name, expected",
    [("auto", "cpu"), ("cpu", "cpu"), ("cuda", "this node has no CUDA device"), ("cuda:1", "this node has no CUDA device"),
     ("tpu", "use 'auto', 'cpu', 'cuda' or 'cuda:N'")],
)
def test_node_device_setting(monkeypatch, name, expected):
    from client_app.node import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a node without a GPU
    if expected == "cpu":
        assert _device(name) == torch.device("cpu")
    else:
        with pytest.raises(ConfigError, match=f"node-config 'device' = '{name}': .*{expected}"):
            _device(name)


def test_server_device_setting(monkeypatch):
    from server_app.server_eval import server_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert server_device("auto") == torch.device("cpu") == server_device("cpu")
    with pytest.raises(ConfigError, match="config key 'server-device' = 'cuda': the server has no CUDA device"):
        server_device("cuda")


@pytest.mark.slow
def test_bf16_on_cpu_trains_and_evaluates_under_autocast(tmp_path):
    full, _, full_replies = run_inprocess(tmp_path / "fp32", **{"num-server-rounds": 1})
    half, _, half_replies = run_inprocess(tmp_path / "bf16", **{"num-server-rounds": 1, "bf16": True})
    fp32 = read_metrics(full)[-1]
    bf16 = read_metrics(half)[-1]
    assert math.isfinite(bf16["train-loss"]) and bf16["train-loss"] != fp32["train-loss"]  # autocast changed the maths
    assert bf16["train-loss"] == pytest.approx(fp32["train-loss"], rel=0.05)  # ... by bf16 rounding only
    assert set(bf16["accuracy"]) == set(fp32["accuracy"])
    for (_, n1, r1), (_, n2, r2) in zip(full_replies, half_replies):  # replies stay float32 on the wire
        s1, s2 = r1.content["arrays"].to_torch_state_dict(), r2.content["arrays"].to_torch_state_dict()
        assert n1 == n2 and all(s2[k].dtype == s1[k].dtype == torch.float32 for k in s1)
