"""Untrusted replies, failing nodes, skipped rounds, config errors (kill-and-resume: test_resume.py)."""

from __future__ import annotations


import pytest
import torch
from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict

from app_helpers import TINY_RUN, allocation_rows, initial_global_state, run_inprocess
from fedra_core import aggregate_fedra
from fedra_core.run_config import ConfigError, load_run_config
from server_app.app import RunError
from server_app.checkpoint import load_checkpoint
from server_app.outputs import read_metrics

BAD = 103  # the node that misbehaves


def _replace_arrays(reply: Message, change) -> Message:
    state = reply.content["arrays"].to_torch_state_dict()
    change(state)
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": reply.content["metrics"]})
    return Message(content, reply_to=_original[reply.metadata.reply_to_message_id])


def _with_metrics(reply: Message, **metrics) -> Message:
    content = RecordDict({"arrays": reply.content["arrays"], "metrics": MetricRecord({**dict(reply.content["metrics"]), **metrics})})
    return Message(content, reply_to=_original[reply.metadata.reply_to_message_id])


def _first_block_key(state):
    return next(k for k in state if k.startswith("blocks."))


def _unsent_block_key(state, message):
    held = set(message.content["config"]["blocks"])
    j = next(j for j in range(12) if j not in held)
    key = _first_block_key(state)
    return "blocks.%d.%s" % (j, key.split(".", 2)[2])


_original: dict = {}

CORRUPTIONS = {
    "key of an unallocated block": lambda rep, msg: _replace_arrays(
        rep, lambda s: s.__setitem__(_unsent_block_key(s, msg), s[_first_block_key(s)].clone())),
    "unknown key": lambda rep, msg: _replace_arrays(rep, lambda s: s.__setitem__("backdoor.weight", torch.zeros(3))),
    "missing key": lambda rep, msg: _replace_arrays(rep, lambda s: s.pop("head.bias")),
    "wrong shape": lambda rep, msg: _replace_arrays(rep, lambda s: s.__setitem__("head.bias", torch.zeros(11))),
    "wrong dtype": lambda rep, msg: _replace_arrays(rep, lambda s: s.__setitem__("head.bias", s["head.bias"].double())),
    "NaN": lambda rep, msg: _replace_arrays(rep, lambda s: s["head.weight"].__setitem__((0, 0), float("nan"))),
    "Inf": lambda rep, msg: _replace_arrays(rep, lambda s: s["head.weight"].__setitem__((0, 0), float("inf"))),
    "huge update": lambda rep, msg: _replace_arrays(rep, lambda s: s["head.weight"].add_(1e4)),
    "negative example count": lambda rep, msg: _with_metrics(rep, **{"num-examples": -5}),
    "absurd example count": lambda rep, msg: _with_metrics(rep, **{"num-examples": 10**12}),
    "error reply": lambda rep, msg: Message(Error(code=7, reason="out of memory"), reply_to=msg),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_bad_reply_is_rejected_and_round_equals_good_replies_alone(tmp_path, kind):
    good = []

    def corrupt(node_id, message, reply):
        _original[message.metadata.message_id] = message
        if node_id == BAD:
            return CORRUPTIONS[kind](reply, message)
        good.append((message, reply))
        return reply

    run_dir, grid, _ = run_inprocess(tmp_path, intercept=corrupt, **{"num-server-rounds": 1, "max-update-norm": 1000.0})
    record = read_metrics(run_dir)[-1]
    assert list(record["rejected"]) == [str(BAD)] and record["accepted"] == [101, 102]
    blocks = [list(m.content["config"]["blocks"]) for m, _ in good]
    expected = aggregate_fedra(
        initial_global_state(TINY_RUN),
        [r.content["arrays"].to_torch_state_dict() for _, r in good],
        allocation_rows(blocks),
    )
    final = load_checkpoint(run_dir / "checkpoint.safetensors").global_state
    assert all(torch.equal(final[k], expected[k]) for k in expected)


@pytest.mark.slow
def test_dead_node_is_dropped_and_too_few_replies_skip_the_round(tmp_path):
    drop = lambda node_id, message, reply: None if node_id == BAD else reply  # noqa: E731
    run_dir, _, _ = run_inprocess(tmp_path, intercept=drop, **{"num-server-rounds": 1})
    record = read_metrics(run_dir)[-1]
    assert record["rejected"] == {str(BAD): "no reply (node failed or timed out)"} and not record["skipped"]

    with pytest.raises(RunError, match="every round of .* was skipped"):  # a run that never trained fails
        run_inprocess(tmp_path / "b", intercept=drop, **{"num-server-rounds": 1, "min-replies": 3})
    run_dir = tmp_path / "b" / "run"
    record = read_metrics(run_dir)[-1]
    assert record["skipped"]
    final = load_checkpoint(run_dir / "checkpoint.safetensors").global_state
    initial = initial_global_state(TINY_RUN)
    assert all(torch.equal(final[k], initial[k]) for k in initial)


@pytest.mark.slow
def test_node_raising_mid_round_does_not_crash_the_run(tmp_path):
    def boom(node_id, message, reply):
        if node_id == BAD:
            raise_in_client = Message(Error(code=1, reason="RuntimeError: killed"), reply_to=message)
            return raise_in_client
        return reply

    run_dir, _, _ = run_inprocess(tmp_path, intercept=boom, **{"num-server-rounds": 2})
    records = read_metrics(run_dir)
    assert [r["accepted"] for r in records[1:]] == [[101, 102], [101, 102]]


# Every bad configuration value tried, and the one-line message it gives (checked below).
BAD_CONFIGS = [
    ({"method": "fedavg"}, "config key 'method' = 'fedavg': unknown method: allowed ['fedra', 'alllarge', 'allsmall', 'inclusivefl', 'depthfl']"),
    ({"capacities": "12,0,3"}, "config key 'capacities' = '12,0,3'"),
    ({"capacities": "12,x"}, "capacities must be a comma-separated list of integers"),
    ({"lr": 0.0}, "config key 'lr' = 0.0: Input should be greater than 0"),
    ({"lr": -1.0}, "config key 'lr' = -1.0: Input should be greater than 0"),
    ({"batch-size": 0}, "config key 'batch-size' = 0: Input should be greater than or equal to 1"),
    ({"num-server-rounds": 0}, "config key 'num-server-rounds' = 0"),
    ({"dirichlet-alpha": 0.0}, "config key 'dirichlet-alpha' = 0.0: Input should be greater than 0"),
    ({"dataset": "imagenet"}, "config key 'dataset' = 'imagenet'"),
    ({"aggregation": "median"}, "config key 'aggregation' = 'median'"),
    ({"allocation": "greedy"}, "config key 'allocation' = 'greedy': Input should be 'random', 'cover' or 'last'"),
    ({"head-calibration-steps": -1}, "config key 'head-calibration-steps' = -1"),
    ({"method": "allsmall", "head-calibration-steps": 8}, "is an option of method 'fedra'; method 'allsmall' does not use it"),
    ({"lora-dropout": 1.5}, "config key 'lora-dropout' = 1.5"),
    ({"backbone-kwargs": "{depth: 12}"}, "config key 'backbone-kwargs' = '{depth: 12}': must be a JSON object"),
    ({"typo-key": 1}, "unknown config key 'typo-key'"),
]


@pytest.mark.parametrize("values, message", BAD_CONFIGS)
def test_bad_config_value_gives_one_clear_line(values, message):
    with pytest.raises(ConfigError) as info:
        load_run_config({**TINY_RUN, **values})
    text = str(info.value)
    assert message in text and "\n" not in text


@pytest.mark.parametrize(
    "values, message",
    [
        ({"capacities": "12,13,3"}, "config key 'capacities': capacity 13 is outside 1..12"),
        ({"backbone": "nosuchnet"}, "unknown backbone 'nosuchnet'"),
        ({"backbone": "resnet50", "backbone-kwargs": ""}, "unsupported architecture ResNet"),
        ({"backbone-kwargs": '{"depth": 12, "wings": 2}'}, "does not accept model_kwargs"),
        ({"backbone-weights": "/nonexistent/w.safetensors"}, "backbone weights file /nonexistent/w.safetensors does not exist"),
        ({"domains": "mnist,klingon"}, "unknown domain 'klingon'"),
    ],
)
def test_bad_config_stops_before_any_training(tmp_path, values, message):
    sent = []
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        run_inprocess(tmp_path, intercept=lambda n, m, r: sent.append(m) or r, **values)
    assert not sent and not (tmp_path / "run").exists()
