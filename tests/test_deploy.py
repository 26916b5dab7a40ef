"""End-to-end deployment: a real SuperLink and three real SuperNodes (capacities 12, 6, 3) on
loopback with TLS and SuperNode authentication, brought up by ``deploy.launch_local`` through the
scripts in ``deploy/`` (the session's shared federation, ``tests/shared_federation.py``). Each node
holds only its own folder of images (imagefolder layout, one domain each); the ServerApp holds no
data; evaluation comes from the nodes. Three FedRA rounds run with ``flwr run``, every message
answered by the node's warm worker; after round 1 one node's folder gets an unreadable image and
the run goes on without that node, and another node's worker is killed while it has a message (a
new worker answers, the node stays in every round). Plus the refusals:
an unregistered SuperNode key, and clients that lack the federation's CA certificate.

The federation is stopped by process id at the end of the session, also when a test or the set-up
fails. The tests run in file order: the refusals are probed after the run. The unreadable image
is repaired after this module, for the next users of the federation.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from safetensors import safe_open

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # deploy/ is not installed: import it from the checkout
    sys.path.insert(0, str(REPO))

from deploy.launch_local import LocalFederation, NodeSpec  # noqa: E402

# three organisations, each with one folder of its own images (imagefolder layout)
from shared_federation import SITES, TEST_IMAGES  # noqa: E402
from server_app.outputs import read_metrics

CAPACITIES = [cap for _, _, cap in SITES]
RUN = {
    "backbone": "vit",
    "backbone-kwargs": json.dumps({"img_size": 28, "patch_size": 7, "embed_dim": 32, "depth": 12, "num_heads": 2}),
    "backbone-weights": "random",
    "num-server-rounds": 3,
    "local-steps": 2,
    "batch-size": 32,
    "run-name": "deploy-e2e",
}


@pytest.fixture(scope="module")
def federation(deployment) -> LocalFederation:
    """The shared SuperLink (TLS + node auth) and the three SuperNodes, online."""
    return deployment.ready()


@pytest.fixture(scope="module")
def site_folders(federation, deployment) -> dict[str, Path]:
    """The organisations' folders, each holding only its own domain's images; while this module's
    run and checks go on, the digits benchmark the images came from is moved out of the cache, so no
    process can read it."""
    from fedra_core.data.digits import digits_file

    digits = digits_file(0)
    hidden = digits.with_name(digits.name + ".hidden")
    digits.rename(hidden)
    yield deployment.site_folders
    hidden.rename(digits)


@pytest.fixture(scope="module")
def run_config(tmp_path_factory) -> dict:
    """The tiny run, writing into a temporary output folder; the backbone built beforehand."""
    from fedra_core import resolve_backbone
    from fedra_core.run_config import load_run_config

    config = {**RUN, "output-dir": str(tmp_path_factory.mktemp("deploy-runs"))}
    resolve_backbone(load_run_config(config).backbone_spec())  # once here rather than in four processes at once
    return config


def _corrupt_after_round_one(folder: Path, image: Path) -> threading.Thread:
    """Once round 1 is in metrics.jsonl, overwrite ``image`` with bytes no decoder reads."""

    def watch() -> None:
        metrics = folder / "metrics.jsonl"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if metrics.is_file() and any(json.loads(line)["round"] == 1 for line in metrics.read_text().splitlines() if line.strip()):
                image.write_bytes(b"this is not an image")
                return
            time.sleep(0.2)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def _workers_of(federation: LocalFederation, name: str) -> list[psutil.Process]:
    """The node workers SuperNode ``name`` started (their owner is its SuperExec)."""
    owners = {str(p.pid) for p in federation.children(name)}
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if "client_app.worker" in cmdline and "--owner" in cmdline and cmdline[cmdline.index("--owner") + 1] in owners:
            found.append(p)
    return found


def _kill_worker_mid_message(federation: LocalFederation, folder: Path, name: str, killed: dict) -> threading.Thread:
    """Once round 1 is in metrics.jsonl, SIGKILL SuperNode ``name``'s worker while one of the node's
    ClientApp processes has a message in hand; note its pid in ``killed``."""

    def watch() -> None:
        metrics = folder / "metrics.jsonl"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if metrics.is_file() and any(json.loads(line)["round"] == 1 for line in metrics.read_text().splitlines() if line.strip()):
                break
            time.sleep(0.2)
        while time.monotonic() < deadline:
            try:
                busy = [p for p in federation.children(name) if "flwr-clientapp" in " ".join(p.cmdline())]
                workers = _workers_of(federation, name)
                if busy and workers:
                    workers[0].kill()
                    killed[name] = workers[0].pid
                    return
            except psutil.Error:  # a process that ended while we looked
                pass
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def killed_workers() -> dict[str, int]:
    """SuperNode name -> the pid of its worker killed during the run."""
    return {}


@pytest.fixture(scope="module")
def run_dir(federation, run_config, site_folders, killed_workers) -> Iterator[Path]:
    """Run 3 FedRA rounds with flwr run; after round 1 site-c's folder gets an unreadable image and
    site-a's node worker is killed while it has a message."""
    online = {int(n["node-id"]) for n in federation.online_nodes()}
    folder = Path(run_config["output-dir"]) / run_config["run-name"]
    victim = sorted((site_folders["site-c"] / "train").rglob("*.png"))[0]
    image = victim.read_bytes()
    try:
        watcher = _corrupt_after_round_one(folder, victim)
        killer = _kill_worker_mid_message(federation, folder, "site-a", killed_workers)
        result = federation.run_app(run_config, timeout=600)
        watcher.join(timeout=1)
        killer.join(timeout=1)
        # flwr run --stream exits 0 even when the ServerApp fails: ask the SuperLink how the run ended
        assert result.ok, f"run {result.run_id}: flwr run {result.returncode}, {result.status}:\n{result.output[-3000:]}"
        assert (folder / "metrics.jsonl").is_file(), f"no metrics written:\n{result.output[-3000:]}"
        assert victim.read_bytes() == b"this is not an image", "the image was not corrupted during the run"
        # the nodes that trained are the authenticated SuperNodes the SuperLink lists
        rounds = _rounds(folder)
        assert {n for r in rounds for n in r["node-ids"]} == online
        yield folder
    finally:
        victim.write_bytes(image)  # site-c's folder readable again for the next users of the federation


def _rounds(folder: Path) -> list[dict]:
    records = read_metrics(folder)
    return [r for r in records if r["round"] >= 1]


def _tensors(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


def _initial_global_state(run_config: dict) -> dict[str, torch.Tensor]:
    """The global state before round 1, rebuilt the way the server builds it (seed, then full model)."""
    from fedra_core import resolve_backbone, trainable_state
    from fedra_core.run_config import load_run_config

    cfg = load_run_config(run_config)
    backbone = resolve_backbone(cfg.backbone_spec())
    torch.manual_seed(cfg.seed)
    model = cfg.recipe(backbone).build(range(backbone.num_layers))
    return {k: v.detach().cpu().clone() for k, v in trainable_state(model).items()}


def test_each_node_trained_on_its_own_folder_and_evaluated_its_own_test_split(run_dir: Path) -> None:
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    everyone = {"mnist": TEST_IMAGES, "printed": TEST_IMAGES, "usps": TEST_IMAGES}
    for r in records[:2]:  # before the corruption: three per-domain rows, reported by the nodes themselves
        assert r["examples"] == everyone and set(r["accuracy"]) == set(everyone)
        assert len(r["eval-nodes"]) == 3 and r["eval-rejected"] == {}
        assert "server-accuracy" not in r  # the server evaluated nothing itself
    first = records[1]
    assert first["partitions"] == [-1, -1, -1]
    assert first["node-labels"] == ["mnist (12 blocks)", "printed (6 blocks)", "usps (3 blocks)"]
    assert first["capacities"] == CAPACITIES
    allocation = np.array(first["allocation"])
    assert allocation.shape == (3, 12) and allocation.sum(axis=1).tolist() == CAPACITIES
    assert first["accepted"] == first["node-ids"] and first["rejected"] == {}
    assert first["bytes-received"] == first["bytes-sent"]  # every reply carried exactly the blocks it was sent
    for name, phases in first["train-timings"].items():  # a fresh process per message: start-up and imports
        assert phases["startup"] > 0 and phases["imports"] > 0 and phases["train"] > 0, (name, phases)
    last = records[-1]  # site-c's folder holds an unreadable image now: the run went on without it
    usps_node = str(first["node-ids"][2])
    assert usps_node in last["rejected"] and len(last["accepted"]) == 2
    assert usps_node in last["eval-rejected"]
    assert last["examples"] == {"mnist": TEST_IMAGES, "printed": TEST_IMAGES}


def test_each_node_answered_in_one_warm_worker_and_a_killed_one_was_replaced(run_dir: Path, killed_workers: dict) -> None:
    from client_app import channel, worker_client
    from fedra_core.cache import cache_dir

    records = read_metrics(run_dir)
    start = (run_dir / "metrics.jsonl").stat().st_mtime - max(1.0, sum(r.get("seconds", 0.0) for r in records)) - 120
    served = {}
    for folder in worker_client.worker_folders(cache_dir()):
        log = folder / channel.MESSAGES
        pids = [json.loads(line)["pid"] for line in log.read_text().splitlines() if json.loads(line)["time"] >= start] if log.exists() else []
        if pids:
            served[folder.name] = pids
    assert len(served) == 3, served  # one worker folder per SuperNode (node-config)
    assert "site-a" in killed_workers, "the worker of site-a was not killed during the run"
    killed = killed_workers["site-a"]
    for pids in served.values():
        if killed in pids:  # site-a: the killed worker, then one new worker for the rest of the run
            assert len(set(pids)) == 2 and pids[-1] != killed and pids.index(pids[-1]) > pids.index(killed), pids
        else:
            assert len(set(pids)) == 1 and len(pids) >= 5, pids  # query, trains and evaluations: one process
    mnist = str(records[1]["node-ids"][0])
    assert all(int(mnist) in r["accepted"] for r in records[1:]), [r["accepted"] for r in records[1:]]
    for r in records[2:]:  # the node's imports are paid once, by its worker: later messages import little
        for node, phases in r["train-timings"].items():
            if node != mnist:
                assert phases.get("imports", 0.0) < 1.0 and phases["forward"] < 2.0, (node, phases)


def test_no_process_opened_the_global_dataset(run_dir: Path) -> None:
    from fedra_core.data.digits import digits_file

    assert not digits_file(0).exists(), "someone rebuilt the digits benchmark: a node or the server read data not its own"


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
    # a capacity-12 node holds every block in every round, so every block trained (that blocks
    # nobody holds keep their values is tests/test_toy_method.py's check)
    assert allocated.all()
    for key in initial:
        block = block_of_key(key)
        if block is None:  # shared keys (head, final norm): every node trains them
            assert not torch.equal(final[key], initial[key]), f"shared key {key} did not change"
        elif "lora_B" in key:
            assert torch.count_nonzero(initial[key]) == 0, f"{key} should start at zero"
            assert torch.count_nonzero(final[key]) > 0, f"{key}: block {block} was trained but LoRA B is still zero"


def test_unregistered_supernode_is_refused(federation: LocalFederation) -> None:
    key = federation.new_key("intruder")  # a valid P-384 key pair the SuperLink does not know
    command = federation.supernode_command(NodeSpec(3, data_format="digits", domain="usps", name="intruder"), private_key=key, root_certificates=federation.certs / "ca.crt")
    code, log = federation.probe("intruder", command, timeout=90)
    assert code is not None, f"the unregistered SuperNode kept running:\n{log[-2000:]}"
    assert code != 0
    assert "Exit Code: 305" in log, log[-2000:]
    assert "CERTIFICATE_VERIFY_FAILED" not in log  # TLS was fine: the key was refused
    assert len(federation.online_nodes()) == 3


def test_supernode_without_ca_certificate_cannot_connect(federation: LocalFederation) -> None:
    key = federation.new_key("no-ca")
    federation.register(["no-ca"])  # registered, so only the missing CA certificate can stop it
    command = federation.supernode_command(NodeSpec(3, data_format="digits", domain="usps", name="no-ca"), private_key=key, root_certificates=None)
    code, log = federation.probe("no-ca", command, timeout=90)
    assert code is not None and code != 0, log[-2000:]
    assert "CERTIFICATE_VERIFY_FAILED" in log, log[-2000:]
    assert len(federation.online_nodes()) == 3


def test_tls_handshake_needs_the_federation_ca(federation: LocalFederation) -> None:
    host, port = federation.public_host, federation.port
    assert port is not None
    without_ca = ssl.create_default_context()  # the system's trust store only
    with socket.create_connection((host, port), timeout=10) as sock:
        with pytest.raises(ssl.SSLCertVerificationError):
            without_ca.wrap_socket(sock, server_hostname="localhost")
    with_ca = ssl.create_default_context(cafile=str(federation.certs / "ca.crt"))
    for name in ("localhost", "127.0.0.1"):  # both are in the certificate's subjectAltName
        with socket.create_connection((host, port), timeout=10) as sock:
            with with_ca.wrap_socket(sock, server_hostname=name) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
