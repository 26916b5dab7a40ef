"""Secure aggregation through the Grid: the real server round and the real node stages, in process.

Protocol-level cases run ``bench.secagg_overhead.simulate_round`` (real stages, a seeded delta
instead of training) against the plain round of the same strategy on the same allocation; whole
runs go through ``runners.local`` with the apps' training."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from safetensors.torch import load_file

from bench.secagg_overhead import simulate_round
from fedra_core.wire import SecAgg as sw
from fedra_core.run_config import ConfigError
from server_app.outputs import read_metrics
from server_app.shamir_batch import combine_many
from app_helpers import run_inprocess


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("drop", [(), (3,), (2, 5, 7)], ids=["no-dropout", "one-dropout", "three-dropouts"])
@pytest.mark.parametrize("aggregation", ["uniform", "examples"])
def test_secure_round_gives_the_plain_round(drop, aggregation):
    plain = simulate_round(8, False, drop=drop, width=32, aggregation=aggregation)
    secure = simulate_round(8, True, drop=drop, width=32, aggregation=aggregation)
    assert secure["metrics"]["accepted-ids"] == plain["metrics"]["accepted-ids"] == [i for i in range(1, 9) if i not in drop]
    assert secure["metrics"]["allocation"] == plain["metrics"]["allocation"]
    moved = _max_diff(plain["state"], simulate_round(8, False, drop=(1,), width=32, aggregation=aggregation)["state"])
    assert moved > 1e-4  # another set of survivors gives another model: the comparison below can fail
    assert _max_diff(secure["state"], plain["state"]) < 1e-6


def test_below_threshold_fails_the_round_cleanly(caplog):
    logger = logging.getLogger("fedra")
    logger.addHandler(caplog.handler)
    try:
        result = simulate_round(8, True, drop=(1, 2, 3, 4, 5), width=32)
    finally:
        logger.removeHandler(caplog.handler)
    assert result["state"] is None and result["metrics"]["skipped"] == 1
    records = {id(r): r for r in caplog.records}.values()  # the handler may also sit on the root logger
    failures = [r.getMessage() for r in records if "secure aggregation failed" in r.getMessage()]
    assert failures == ["round 1: secure aggregation failed: 3 masked updates arrived, fewer than the threshold 4 "
                        "or min-replies 1; the global model stays as it was"]


def test_upload_is_masked_and_costs_no_more_than_the_plain_one():
    plain = simulate_round(6, False, width=64)
    secure = simulate_round(6, True, width=64)
    for node, sizes in secure["bytes"].items():
        # key material of six nodes is a few kB; the masked upload itself is no larger than the plain one
        assert sizes["out"] <= 1.1 * plain["bytes"][node]["out"] + 2000 * 6


def test_batched_shamir_matches_flower():
    import os

    from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares

    secrets = [os.urandom(32) for _ in range(5)]
    shares = [create_shares(s, 4, 9) for s in secrets]
    responders = [8, 2, 5, 0]
    rebuilt = combine_many([r + 1 for r in responders], [[shares[s][r] for s in range(5)] for r in responders])
    assert rebuilt == secrets == [combine_shares([shares[s][r] for r in responders]) for s in range(5)]


def _node_context(run_config: dict) -> Context:
    return Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config=run_config)


def _query(name: str, values: dict) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    return Message(RecordDict({sw.RECORD: ConfigRecord({sw.ROUND: 1, **values})}), dst_node_id=5, message_type=f"query.{name}")


def test_node_refuses_a_threshold_below_its_own():
    from client_app.secure_aggregation import setup

    context = _node_context({"secure-aggregation": True, "secagg-threshold": 0.5})
    with pytest.raises(ValueError, match="below this run's secagg-threshold"):
        setup(_query(sw.SETUP, {sw.INDEX: 0, sw.NUM: 10, sw.THRESHOLD: 2}), context)
    reply = setup(_query(sw.SETUP, {sw.INDEX: 0, sw.NUM: 10, sw.THRESHOLD: 5}), context)
    assert len(reply.content[sw.RECORD][sw.ENC_KEY]) == 33


def test_inclusivefl_is_refused_at_start(tmp_path):
    with pytest.raises(ConfigError, match="config key 'secure-aggregation' = true: method 'inclusivefl' needs each node's update"):
        run_inprocess(tmp_path, **{"method": "inclusivefl", "secure-aggregation": True})


def test_capacities_that_leave_a_lonely_block_are_refused_at_start(tmp_path):
    # 12, 6, 3 blocks: the 6 + 3 blocks of the two small nodes never cover the 12, so some block has only one holder
    with pytest.raises(ConfigError, match="config key 'secagg-min-holders' = 2: method 'fedra' with capacities \\[12, 6, 3\\]"):
        run_inprocess(tmp_path, **{"secure-aggregation": True})


def _adapter(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _drop_round_1(node: int):
    def intercept(node_id, message, reply):
        round_ = int(message.content["config"]["server-round"])
        return None if node_id == node and round_ == 1 else reply
    return intercept


@pytest.mark.slow
def test_secure_run_gives_the_plain_runs_adapter_with_a_dropout_after_masking(tmp_path):
    # the recorded tiny run (refactor_baseline "fedra/vit" = TINY_RUN), 2 rounds; node 102 trains and
    # masks in round 1 but its reply is lost. secagg-min-holders=1: capacities 12, 6, 3 leave blocks
    # to the big node alone (refused at the default 2, above)
    common = {"num-server-rounds": 2, "secagg-min-holders": 1}
    plain_dir, _, _ = run_inprocess(tmp_path / "plain", intercept=_drop_round_1(102), **common)
    secure_dir, grid, replies = run_inprocess(tmp_path / "secure", intercept=_drop_round_1(102), **{**common, "secure-aggregation": True})
    assert [r["accepted"] for r in read_metrics(secure_dir)[1:]] == [[101, 103], [101, 102, 103]]
    assert [r["accepted"] for r in read_metrics(plain_dir)[1:]] == [[101, 103], [101, 102, 103]]
    kinds = {m.metadata.message_type for m in grid.sent}
    assert {"query.secagg_setup", "query.secagg_shares", "query.secagg_unmask", "train"} <= kinds
    uploads = [reply.content["arrays"] for _, _, reply in replies]
    assert all(array.dtype == "uint32" for arrays in uploads for array in arrays.values())
    plain, secure = _adapter(plain_dir), _adapter(secure_dir)
    assert _max_diff(plain, secure) < 1e-6
    assert max(float(v.abs().max()) for v in plain.values()) > 0.01


@pytest.mark.slow
def test_below_threshold_round_keeps_the_model_and_the_run_goes_on(tmp_path):
    def drop_two(node_id, message, reply):
        return None if node_id in (102, 103) and int(message.content["config"]["server-round"]) == 1 else reply

    run_dir, grid, _ = run_inprocess(tmp_path, intercept=drop_two, **{"num-server-rounds": 2, "secagg-min-holders": 1,
                                                                    "secure-aggregation": True})
    records = read_metrics(run_dir)
    assert [r["skipped"] for r in records[1:]] == [True, False]
    evaluated = [m.content["arrays"].to_torch_state_dict() for m in grid.sent if m.metadata.message_type == "evaluate"]
    by_round = {int(m.content["config"]["server-round"]): s for m, s in
                zip([m for m in grid.sent if m.metadata.message_type == "evaluate"], evaluated)}
    assert _max_diff(by_round[0], by_round[1]) == 0.0
    assert _max_diff(by_round[1], by_round[2]) > 0.0
    np.testing.assert_equal(len(by_round), 3)


@pytest.mark.slow
def test_secure_aggregation_with_dp_noises_each_blocks_sum_over_its_holders(tmp_path):
    # one round, the same training (the tiny run's updates, norms ~0.14, stay under C = 1): the DP
    # run's adapter differs from the plain secure run's by the noise alone, N(0, (zC)^2) on each
    # block's unmasked sum divided by its holder count k, so each block's difference has std zC/k
    z, c = 0.01, 1.0
    common = {"num-server-rounds": 1, "secagg-min-holders": 1, "secure-aggregation": True, "eval-every": 0}
    plain_dir, _, _ = run_inprocess(tmp_path / "plain", **common)
    dp_dir, _, _ = run_inprocess(tmp_path / "dp", **{**common, "dp-noise-multiplier": z, "dp-clip-norm": c})
    record = read_metrics(dp_dir)[1]
    assert record["epsilon"] > 0
    holders = np.asarray(record["allocation"]).sum(axis=0)
    plain, noisy = _adapter(plain_dir), _adapter(dp_dir)
    by_block: dict[int, list[torch.Tensor]] = {}
    for key in plain:
        if ".blocks." in key and "lora_" in key:
            by_block.setdefault(int(key.split(".blocks.")[1].split(".")[0]), []).append((noisy[key] - plain[key]).double().flatten())
    assert by_block
    for block, diffs in by_block.items():
        std = float(torch.cat(diffs).std())
        assert std == pytest.approx(z * c / holders[block], rel=0.1), (block, holders[block], std)
