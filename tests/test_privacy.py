"""Per-block client-level differential privacy (issue 23, item 3): the node's clipping, the server's
per-block noise calibration, the accountant's epsilon in every round record, the config checks, and
that z = 0 changes nothing. Expected values are computed here independently (by hand, with
dp-accounting directly, with the plain aggregation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from scipy import stats

from app_helpers import TINY_RUN, run_inprocess, train_messages
from fedra_core import accounting
from fedra_core.aggregation import aggregate_fedra
from fedra_core.privacy import clip_excess, clip_update, noise_generator, noisy_holder_mean, update_norm
from fedra_core.run_config import ConfigError, load_run_config
from runners.local import run_local
from server_app.outputs import read_metrics


# --- the node's clipping -----------------------------------------------------------------------
def test_clip_update_hand_worked():
    received = {"blocks.0.a": torch.tensor([1.0, 1.0]), "head.w": torch.tensor([2.0])}
    trained = {"blocks.0.a": torch.tensor([4.0, 1.0]), "head.w": torch.tensor([6.0])}  # update (3, 0 | 4): norm 5
    clipped = clip_update(trained, received, 1.0)  # scale 1/5: update (0.6, 0 | 0.8)
    assert torch.allclose(clipped["blocks.0.a"], torch.tensor([1.6, 1.0]))
    assert torch.allclose(clipped["head.w"], torch.tensor([2.8]))
    assert update_norm(clipped, received) == pytest.approx(1.0, rel=1e-6)
    unchanged = clip_update(trained, received, 10.0)  # norm 5 <= 10: as trained
    assert all(torch.equal(unchanged[k], trained[k]) for k in trained)
    with pytest.raises(ValueError, match="differ in key"):
        clip_update({"head.w": torch.tensor([1.0])}, received, 1.0)


def test_clip_excess_allows_rounding_only():
    sent = {"head.w": torch.ones(1000)}
    assert clip_excess(1.0 + 1e-7, 1.0, sent) is None
    assert "exceeds dp-clip-norm 1" in clip_excess(1.01, 1.0, sent)


# --- the server's noise, per block ------------------------------------------------------------
def _zero_update_round(n: int = 20_000):
    """Five clients with zero updates: block 0 held by client 0 alone, block 1 and the head by all."""
    global_state = {"blocks.0.w": torch.zeros(n), "blocks.1.w": torch.zeros(n), "head.w": torch.zeros(n), "blocks.2.w": torch.ones(n)}
    allocation = np.zeros((5, 3), dtype=bool)
    allocation[0, 0] = True
    allocation[:, 1] = True
    states = [{k: v.clone() for k, v in global_state.items() if k != "blocks.2.w" and (k != "blocks.0.w" or i == 0)} for i in range(5)]
    return global_state, states, allocation


@pytest.mark.parametrize("z, clip", [(1.1, 1.0), (0.5, 0.2)])
def test_noise_variance_is_calibrated_per_block(z, clip):
    global_state, states, allocation = _zero_update_round()
    out = noisy_holder_mean(global_state, states, allocation, z * clip, noise_generator(7, 3))
    for key, k in (("blocks.0.w", 1), ("blocks.1.w", 5), ("head.w", 5)):
        x = out[key].double().numpy()
        n, expected = x.size, (z * clip / k) ** 2  # noise N(0, (zC)^2) on the sum, divided by k holders
        statistic = (n - 1) * x.var(ddof=1) / expected  # chi-square with n - 1 degrees of freedom
        assert stats.chi2.ppf(1e-4, n - 1) < statistic < stats.chi2.ppf(1 - 1e-4, n - 1), (key, x.var(ddof=1), expected)
        assert abs(x.mean()) < 5 * math.sqrt(expected / n), key
        # Flower's sigma = zC/m for every element would give the one-holder block a variance m^2 times too small
        assert x.var(ddof=1) > 10 * (z * clip / 5) ** 2 or k == 5
    assert torch.equal(out["blocks.2.w"], global_state["blocks.2.w"])  # held by nobody: unchanged, no noise


def test_noise_is_reproducible_and_its_own_stream():
    global_state, states, allocation = _zero_update_round(100)
    a = noisy_holder_mean(global_state, states, allocation, 1.0, noise_generator(7, 3))
    b = noisy_holder_mean(global_state, states, allocation, 1.0, noise_generator(7, 3))
    c = noisy_holder_mean(global_state, states, allocation, 1.0, noise_generator(7, 4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.w"], c["head.w"])


def test_without_noise_it_is_the_plain_per_block_mean():
    gen = torch.Generator().manual_seed(0)
    global_state = {f"blocks.{j}.w": torch.randn(4, 3, generator=gen) for j in range(4)} | {"head.w": torch.randn(5, generator=gen)}
    allocation = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0]], dtype=bool)
    states = [{k: v + torch.randn(v.shape, generator=gen) for k, v in global_state.items()
               if k == "head.w" or allocation[i, int(k.split(".")[1])]} for i in range(3)]
    out = noisy_holder_mean(global_state, states, allocation, 0.0, noise_generator(0, 1))
    plain = aggregate_fedra(global_state, states, allocation)
    assert all(torch.allclose(out[k], plain[k], atol=1e-6) for k in plain)


# --- the accountant -----------------------------------------------------------------------------
def _direct_epsilon(z: float, rounds: int, delta: float, event=None, relation=None) -> float:
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    acc = RdpAccountant() if relation is None else RdpAccountant(neighboring_relation=relation)
    acc.compose(dp_accounting.SelfComposedDpEvent(event or dp_accounting.GaussianDpEvent(z), rounds))
    return acc.get_epsilon(delta)


def test_epsilon_is_dp_accountings_for_a_known_schedule():
    import dp_accounting

    assert accounting.epsilon(1.1, 20, 1e-5) == pytest.approx(_direct_epsilon(1.1, 20, 1e-5), rel=1e-12)
    assert accounting.epsilon(1.1, 20, 1e-5) == pytest.approx(26.50, abs=0.01)
    # q = 0.5 (3 of 6 nodes, uniform): the fixed-size draw's event needs replace-one adjacency
    # (sensitivity 2C, noise multiplier z/2) and gives more than no amplification, so none is claimed
    wor = dp_accounting.SampledWithoutReplacementDpEvent(6, 3, dp_accounting.GaussianDpEvent(1.1 / 2))
    assert _direct_epsilon(1.1, 20, 1e-5, wor, dp_accounting.NeighboringRelation.REPLACE_ONE) > accounting.epsilon(1.1, 20, 1e-5)
    assert accounting.epsilon(1.1, 0, 1e-5) == 0.0
    z = accounting.noise_for_epsilon(4.0, 20, 1e-5)
    assert accounting.epsilon(z, 20, 1e-5) <= 4.0 < accounting.epsilon(z - 1e-3, 20, 1e-5)


# --- the config ---------------------------------------------------------------------------------
def test_dp_with_a_method_that_needs_individual_updates_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        run_local({**TINY_RUN, "method": "inclusivefl", "dp-noise-multiplier": 1.0, "output-dir": str(tmp_path)}, 3)
    assert "'dp-noise-multiplier'" in str(info.value) and "inclusivefl" in str(info.value) and "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="'aggregation' = 'examples'.*allowed: 'uniform'"):
        load_run_config({"dp-noise-multiplier": 1.0, "aggregation": "examples"})
    assert load_run_config({"method": "inclusivefl", "dp-clip-norm": 0.5}).dp_settings() is None  # z = 0: off
    for key, value in (("dp-noise-multiplier", -0.1), ("dp-clip-norm", 0.0), ("dp-delta", 1.0), ("dp-noise-multiplier", True)):
        with pytest.raises(ConfigError, match=f"'{key}'"):
            load_run_config({key: value})


# --- through the apps ---------------------------------------------------------------------------
@pytest.mark.slow
def test_z_zero_is_bit_identical_to_the_plain_run(tmp_path):
    plain, grid, _ = run_inprocess(tmp_path / "a", **{"num-server-rounds": 2})
    off, grid_off, _ = run_inprocess(tmp_path / "b", **{"num-server-rounds": 2, "dp-noise-multiplier": 0.0, "dp-clip-norm": 0.01})
    name = "adapter/adapter_model.safetensors"
    assert (plain / name).read_bytes() == (off / name).read_bytes()
    assert all("epsilon" not in r for r in read_metrics(off))
    assert all("dp-clip-norm" not in m.content["config"] for m in train_messages(grid_off, 1))


@pytest.mark.slow
def test_nodes_clip_the_server_rejects_an_unclipped_reply_and_records_epsilon(tmp_path):
    clip, z = 0.05, 0.8
    norms: list[float] = []
    tampered: list[int] = []

    def tamper(node_id, message, reply):
        sent = message.content["arrays"].to_torch_state_dict()
        got = reply.content["arrays"].to_torch_state_dict()
        norms.append(update_norm(got, sent))
        if not tampered and int(message.content["config"]["server-round"]) == 2:  # twice the clipped update
            tampered.append(node_id)
            reply.content["arrays"] = ArrayRecord({k: sent[k] + 2 * (got[k] - sent[k]) for k in got})
        return reply

    run_dir, grid, _ = run_inprocess(tmp_path, intercept=tamper, **{
        "num-server-rounds": 3, "dp-noise-multiplier": z, "dp-clip-norm": clip,
        "client-sampling": "uniform", "clients-per-round": 2,
    })
    assert all(float(m.content["config"]["dp-clip-norm"]) == clip for m in train_messages(grid, 1))
    assert len(norms) == 6 and max(norms) <= clip * (1 + 1e-5)
    assert min(norms) == pytest.approx(clip, rel=1e-4)  # unclipped updates of this run are ~0.13: every one was clipped
    records = read_metrics(run_dir)
    assert list(records[2]["rejected"]) == [str(tampered[0])] and "exceeds dp-clip-norm" in records[2]["rejected"][str(tampered[0])]
    assert all(r["rejected"] == {} for r in records[1::2])
    assert [len(r["node-ids"]) for r in records[1:]] == [2, 2, 2]
    # every record carries epsilon, that of dp-accounting after the rounds so far (no amplification for uniform)
    assert [r["epsilon"] for r in records] == [0.0] + [pytest.approx(_direct_epsilon(z, r, 1e-5), rel=1e-12) for r in (1, 2, 3)]
    summary = (run_dir / "summary.md").read_text()
    assert f"(epsilon, delta) = ({records[-1]['epsilon']:.4g}, 1e-05)" in summary
