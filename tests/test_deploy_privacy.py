"""Secure aggregation and per-block differential privacy in a real deployment: the session's shared
federation (a SuperLink with TLS and SuperNode authentication, three SuperNodes as processes, each
holding its own image folder; ``tests/shared_federation.py``) runs two FedRA rounds with
``secure-aggregation = true`` and ``dp-noise-multiplier > 0`` through ``flwr run``. Every stage of
the protocol (key advertisement, encrypted shares routed by the server, masked upload, unmasking)
is a Message-API message that a fresh ClientApp process on a SuperNode answers."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # deploy/ is not installed: import it from the checkout
    sys.path.insert(0, str(REPO))

from shared_federation import SITES  # noqa: E402
from test_deploy import RUN as DEPLOY_RUN  # noqa: E402
from server_app.outputs import read_metrics  # noqa: E402

Z, C, DELTA = 0.5, 1.0, 1e-5
RUN = {
    **DEPLOY_RUN,  # the tiny ViT run of the deployment test
    "num-server-rounds": 2,
    "run-name": "secagg-dp",
    "secure-aggregation": True,
    # capacities 12, 6, 3 over 12 blocks: some blocks have one holder in every draw (README: Privacy)
    "secagg-min-holders": 1,
    "dp-noise-multiplier": Z,
    "dp-clip-norm": C,
    "dp-delta": DELTA,
}


@pytest.fixture(scope="module")
def run_dir(deployment, tmp_path_factory) -> Path:
    """Two secure, differentially private rounds on the shared federation."""
    from fedra_core import resolve_backbone
    from fedra_core.run_config import load_run_config

    federation = deployment.ready()
    config = {**RUN, "output-dir": str(tmp_path_factory.mktemp("secagg-runs"))}
    resolve_backbone(load_run_config(config).backbone_spec())
    result = federation.run_app(config, timeout=900, log_name="secagg-dp.log")
    assert result.ok, f"run {result.run_id}: flwr run {result.returncode}, {result.status}:\n{result.output[-3000:]}"
    return Path(config["output-dir"]) / config["run-name"]


def test_secure_dp_rounds_aggregate_every_node_and_account_epsilon(run_dir: Path) -> None:
    import dp_accounting

    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records[1:]:
        assert not r["skipped"] and len(r["accepted"]) == len(SITES) and r["rejected"] == {}, r
        assert np.array(r["allocation"]).sum(axis=1).tolist() == [cap for _, _, cap in SITES]
        assert any("secure-aggregation" in phase for phase in r["train-timings"]["server"]), r["train-timings"]
        # the accountant, independently: r Gaussian mechanisms of noise multiplier Z
        accountant = dp_accounting.rdp.RdpAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(Z), r["round"])
        assert r["epsilon"] == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-9)
    assert records[2]["epsilon"] > records[1]["epsilon"] > 0
    assert "epsilon" in (run_dir / "summary.md").read_text()
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
