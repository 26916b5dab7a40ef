"""End-to-end deployment: a real SuperLink and three real SuperNodes (capacities 12, 6, 3) on
loopback with TLS and SuperNode authentication, brought up by ``deploy.launch_local`` through the
scripts in ``deploy/``, running two FedRA rounds with ``flwr run``; plus the refusals: an
unregistered SuperNode key, and clients that lack the federation's CA certificate.

Everything is started once per module and stopped by process id by a finalizer, also when a test
or the set-up fails. The tests run in file order: the refusals are probed after the run.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # deploy/ is not installed: import it from the checkout
    sys.path.insert(0, str(REPO))

if shutil.which("openssl") is None or shutil.which("ssh-keygen") is None:
    pytest.skip("the deployment test needs openssl and ssh-keygen", allow_module_level=True)

from deploy.launch_local import LocalFederation, NodeSpec  # noqa: E402
from server_app.simulate import prepare_assets  # noqa: E402

NODES = [NodeSpec(12, 0), NodeSpec(6, 1), NodeSpec(3, 2)]
CAPACITIES = [n.capacity for n in NODES]
RUN = {
    "backbone": "vit",
    "backbone-kwargs": json.dumps({"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 12, "num_heads": 2}),
    "backbone-weights": "random",
    "num-server-rounds": 2,
    "capacities": "12,6,3",
    "domains": "mnist,printed,usps",
    "local-steps": 2,
    "batch-size": 32,
    "eval-max-examples": 200,
    "run-name": "deploy-e2e",
}


@pytest.fixture(scope="module")
def run_config(tmp_path_factory) -> dict:
    """The tiny run, writing into a temporary output folder; backbone and data built beforehand."""
    config = {**RUN, "output-dir": str(tmp_path_factory.mktemp("deploy-runs"))}
    prepare_assets(config)  # once here rather than in three SuperNodes and the ServerApp at once
    return config


@pytest.fixture(scope="module")
def federation(request, tmp_path_factory, run_config) -> LocalFederation:
    """SuperLink (TLS + node auth) and the three SuperNodes, online; stopped by the finalizer."""
    fed = LocalFederation(tmp_path_factory.mktemp("deploy-work"))
    request.addfinalizer(fed.stop)  # registered before anything starts: covers a failing start
    fed.start(NODES, timeout=120)
    return fed


@pytest.fixture(scope="module")
def run_dir(federation, run_config) -> Path:
    """Run 2 FedRA rounds with flwr run; return the run's output folder."""
    online = {int(n["node-id"]) for n in federation.online_nodes()}
    result = federation.run_app(run_config, timeout=480)
    # flwr run --stream exits 0 even when the ServerApp fails: ask the SuperLink how the run ended
    assert result.ok, f"run {result.run_id}: flwr run {result.returncode}, {result.status}:\n{result.output[-3000:]}"
    folder = Path(run_config["output-dir"]) / run_config["run-name"]
    assert (folder / "metrics.jsonl").is_file(), f"no metrics written:\n{result.output[-3000:]}"
    # the nodes that trained are the authenticated SuperNodes the SuperLink lists
    rounds = _rounds(folder)
    assert {n for r in rounds for n in r["node-ids"]} == online
    return folder


def _rounds(folder: Path) -> list[dict]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if r["round"] >= 1]


def _tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def _initial_global_state(run_config: dict) -> dict[str, torch.Tensor]:
    """The global state before round 1, rebuilt the way the server builds it (seed, then full model)."""
    from fedra_core import build_trainable_model, resolve_backbone, trainable_state
    from fedra_core.run_config import load_run_config

    cfg = load_run_config(run_config)
    backbone = resolve_backbone(cfg.backbone_spec())
    torch.manual_seed(cfg.seed)
    model = build_trainable_model(backbone, range(backbone.num_layers), cfg.lora(), cfg.method_settings())
    return {k: v.detach().cpu().clone() for k, v in trainable_state(model).items()}


def test_every_node_trained_its_allocated_blocks(run_dir: Path) -> None:
    rounds = _rounds(run_dir)
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert r["partitions"] == [0, 1, 2]
        assert r["capacities"] == CAPACITIES
        allocation = np.array(r["allocation"])
        assert allocation.shape == (3, 12)
        assert allocation.sum(axis=1).tolist() == CAPACITIES
        assert r["accepted"] == r["node-ids"] and len(set(r["accepted"])) == 3
        assert r["rejected"] == {} and r["skipped"] is False
        # every reply carried exactly the blocks it was sent (same byte count back)
        assert r["bytes-received"] == r["bytes-sent"]
        assert np.isfinite(r["train-loss"])
    assert rounds[0]["node-ids"] == rounds[1]["node-ids"]


def test_global_adapter_changed_only_where_allocated(run_dir: Path, run_config: dict) -> None:
    from fedra_core import block_of_key
    from fedra_core.lora import PEFT_PREFIX

    initial = _initial_global_state(run_config)
    final = _tensors(run_dir / "checkpoint.safetensors", "global/")
    assert final.keys() == initial.keys()
    adapter = _tensors(run_dir / "adapter" / "adapter_model.safetensors", PEFT_PREFIX)
    assert adapter.keys() == final.keys()
    for key, value in adapter.items():
        assert torch.equal(value, final[key]), f"adapter and checkpoint differ at {key}"

    allocated = np.zeros(12, dtype=bool)
    for r in _rounds(run_dir):
        allocated |= np.array(r["allocation"]).astype(bool).any(axis=0)
    # With a capacity-12 node every block is held in every round; the "never allocated" branch
    # below is what guards any other set of capacities.
    assert allocated.all()
    for key in initial:
        block = block_of_key(key)
        if block is None:  # shared keys (head, final norm): every node trains them
            assert not torch.equal(final[key], initial[key]), f"shared key {key} did not change"
        elif not allocated[block]:
            assert torch.equal(final[key], initial[key]), f"{key}: block {block} was never allocated but changed"
        elif "lora_B" in key:
            assert torch.count_nonzero(initial[key]) == 0, f"{key} should start at zero"
            assert torch.count_nonzero(final[key]) > 0, f"{key}: block {block} was trained but LoRA B is still zero"


def test_unregistered_supernode_is_refused(federation: LocalFederation) -> None:
    key = federation.new_key("intruder")  # a valid P-384 key pair the SuperLink does not know
    command = federation.supernode_command(NodeSpec(3, 2), private_key=key, root_certificates=federation.certs / "ca.crt")
    code, log = federation.probe("intruder", command, timeout=90)
    assert code is not None, f"the unregistered SuperNode kept running:\n{log[-2000:]}"
    assert code != 0
    assert "Exit Code: 305" in log, log[-2000:]
    assert "CERTIFICATE_VERIFY_FAILED" not in log  # TLS was fine: the key was refused
    assert len(federation.online_nodes()) == 3


def test_supernode_without_ca_certificate_cannot_connect(federation: LocalFederation) -> None:
    key = federation.new_key("no-ca")
    federation.register(["no-ca"])  # registered, so only the missing CA certificate can stop it
    command = federation.supernode_command(NodeSpec(3, 2), private_key=key, root_certificates=None)
    code, log = federation.probe("no-ca", command, timeout=90)
    assert code is not None and code != 0, log[-2000:]
    assert "CERTIFICATE_VERIFY_FAILED" in log, log[-2000:]
    assert len(federation.online_nodes()) == 3


def test_tls_handshake_needs_the_federation_ca(federation: LocalFederation) -> None:
    port = federation.port
    assert port is not None
    without_ca = ssl.create_default_context()  # the system's trust store only
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with pytest.raises(ssl.SSLCertVerificationError):
            without_ca.wrap_socket(sock, server_hostname="localhost")
    with_ca = ssl.create_default_context(cafile=str(federation.certs / "ca.crt"))
    for host in ("localhost", "127.0.0.1"):  # both are in the certificate's subjectAltName
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            with with_ca.wrap_socket(sock, server_hostname=host) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
