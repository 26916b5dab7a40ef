"""From the network only the Fleet API answers; the Control API answers only the operator.

Real processes on loopback, TLS and SuperNode authentication as ``deploy/start_superlink.sh`` sets
them up (through ``deploy.launch_local``): the SuperLink's public side (the Fleet API proxy,
``deploy/fleet_proxy.sh``) on 127.0.0.2, the SuperLink itself (Control and Runtime API) on
127.0.0.1 only, where the operator's flwr CLI talks to it (the session's shared federation,
``tests/shared_federation.py``). An outsider holding only ``ca.crt`` (which every SuperNode host
gets) and pointing the deploy scripts and the flwr CLI at the public address can neither register
a SuperNode key, nor list runs, nor start one; the operator can; the three SuperNodes connected to
127.0.0.2 train one FedRA round.

Against the unprotected set-up (the outsider's connection pointed at the SuperLink's own port,
which is what Flower's one-port SuperLink exposes on a public address) the refusal tests fail:
the outsider registers its key, lists runs and starts a run.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # deploy/ is not installed: import it from the checkout
    sys.path.insert(0, str(REPO))

from deploy.launch_local import LocalFederation, NodeSpec, flwr_json  # noqa: E402
from shared_federation import PUBLIC, SITES  # noqa: E402
from test_deploy import RUN  # noqa: E402  (the tiny ViT run of the deployment test)
from server_app.outputs import read_metrics

DEPLOY = REPO / "deploy"
OUTSIDER = "outsider"  # connection name of the ca.crt holder, and the name of its key


@pytest.fixture(scope="module")
def federation(deployment) -> LocalFederation:
    """The shared SuperLink (TLS + node auth, Fleet proxy on 127.0.0.2) and its three SuperNodes on
    127.0.0.2, online."""
    from fedra_core import resolve_backbone
    from fedra_core.run_config import load_run_config

    resolve_backbone(load_run_config(RUN).backbone_spec())  # built once here, not in four processes at once
    return deployment.ready()


@pytest.fixture(scope="module")
def outsider(federation: LocalFederation) -> dict:
    """A ca.crt holder's flwr home with a connection to the public address, and a key pair of its own."""
    home = federation.work_dir / "outsider-home"
    ca = federation.work_dir / "outsider-ca.crt"  # all it has from the federation
    shutil.copy(federation.certs / "ca.crt", ca)
    key = federation.new_key(OUTSIDER)
    written = subprocess.run(  # its flwr CLI connection: the public address, with ca.crt
        ["bash", "-c", 'source "$0" && fedra_write_connection "$@"', str(DEPLOY / "_common.sh"),
         str(home), OUTSIDER, federation.address, str(ca), "0"], capture_output=True, text=True, timeout=30,
    )
    assert written.returncode == 0, written.stderr
    return {"home": home, "ca": ca, "key": key, "env": {**federation.env, "FLWR_HOME": str(home)}}


def _script(name: str, *args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DEPLOY / name), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _flwr(fed: LocalFederation, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([fed._bin("flwr"), *args], env=env, capture_output=True, text=True, timeout=120)


def _operator(fed: LocalFederation, *args: str) -> dict:
    return flwr_json(fed._bin("flwr"), args, {**fed.env, "FLWR_HOME": str(fed.operator_home)})


def _registered_ids(fed: LocalFederation) -> set[int]:
    """The SuperLink's SuperNodes, registered or connected (its list names no key)."""
    return {int(n["node-id"]) for n in _operator(fed, "supernode", "ls", fed.connection).get("nodes", [])}


def _run_ids(fed: LocalFederation) -> list[int]:
    return sorted(int(r["run-id"]) for r in _operator(fed, "ls", fed.connection).get("runs", []))


def test_certificate_names_the_public_address(federation: LocalFederation) -> None:
    sans = subprocess.run(
        ["openssl", "x509", "-in", str(federation.certs / "server.pem"), "-noout", "-ext", "subjectAltName"],
        capture_output=True, text=True, check=True,
    ).stdout
    for name in (f"IP Address:{PUBLIC}", "IP Address:127.0.0.1", "DNS:localhost"):
        assert name in sans, sans


def test_superlink_itself_listens_on_loopback_only(federation: LocalFederation) -> None:
    assert federation.address == f"{PUBLIC}:{federation.port}"
    assert federation.control_address == f"127.0.0.1:{federation.control_port}"
    with pytest.raises(ConnectionRefusedError):  # the Control/Runtime port is not bound on the public address
        socket.create_connection((PUBLIC, federation.control_port), timeout=5).close()


def _post(host: str, port: int, path: str, ca: Path) -> tuple[int, str]:
    """POST an empty protobuf body to ``path`` over TLS; return (status, body)."""
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection(host, port, context=context, timeout=30)
    try:
        conn.request("POST", path, body=b"", headers={"Content-Type": "application/protobuf"})
        reply = conn.getresponse()
        return reply.status, reply.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.mark.parametrize("path", [
    "/v1/control/list-runs", "/v1/control/register-node", "/v1/control/start-run", "/v1/runtime/get-nodes",
    "/docs", "/health", "/v1/fleet/../control/list-runs", "/v1/fleet/%2e%2e/control/list-runs",
    "/v1/fleet/..%2fcontrol/list-runs", "//v1/control/list-runs", "/v1/fleet/x/../../control/list-runs",
])
def test_public_address_refuses_everything_but_the_fleet_api(federation: LocalFederation, outsider: dict, path: str) -> None:
    status, body = _post(PUBLIC, federation.port, path, outsider["ca"])
    assert status == 403, (path, status, body[:300])


def test_public_address_forwards_the_fleet_api(federation: LocalFederation, outsider: dict) -> None:
    status, body = _post(PUBLIC, federation.port, "/v1/fleet/get-run", outsider["ca"])
    assert status != 403 and "refused" not in body, (status, body[:300])  # the SuperLink's answer (a bad request)


def test_ca_holder_cannot_register_a_node_key(federation: LocalFederation, outsider: dict) -> None:
    before = _registered_ids(federation)
    # the audit's way: the deploy script with the public address and only ca.crt
    run = _script("register_nodes.sh", "--superlink", federation.address, "--ca", str(outsider["ca"]),
                  "--connection", OUTSIDER, "--flwr-home", str(outsider["home"]), f"{outsider['key']}.pub", env=outsider["env"])
    assert run.returncode != 0, run.stdout + run.stderr
    assert "403 Forbidden" in run.stderr and "hint:" in run.stderr, run.stderr[-2000:]
    direct = _flwr(federation, outsider["env"], "supernode", "register", f"{outsider['key']}.pub", OUTSIDER, "--name", OUTSIDER)
    assert "403 Forbidden" in direct.stdout + direct.stderr, direct.stdout[-2000:]
    assert _registered_ids(federation) == before
    # and the key really is unknown: a SuperNode with it is refused (Flower's code 305)
    command = federation.supernode_command(NodeSpec(3, data_format="digits", domain="usps", name=OUTSIDER),
                                           private_key=outsider["key"], root_certificates=outsider["ca"])
    code, log = federation.probe("outsider-node", command, timeout=90)
    assert code is not None and "Exit Code: 305" in log, log[-2000:]


def test_ca_holder_cannot_list_runs(federation: LocalFederation, outsider: dict) -> None:
    listed = _flwr(federation, outsider["env"], "ls", OUTSIDER, "--format", "json")
    assert '"success": true' not in listed.stdout, listed.stdout[-2000:]
    assert "403" in listed.stdout + listed.stderr, listed.stdout[-2000:]


def test_ca_holder_cannot_start_a_run(federation: LocalFederation, outsider: dict) -> None:
    before = _run_ids(federation)
    try:
        run = _script("run_app.sh", "--superlink", federation.address, "--ca", str(outsider["ca"]), "--connection", OUTSIDER,
                      "--flwr-home", str(outsider["home"]), "--app", str(REPO), "num-server-rounds=1", "run-name='outsider'",
                      env=outsider["env"], timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("the outsider's flwr run was not refused: it was still streaming a run after 120 s")
    output = run.stdout + run.stderr
    assert "started run" not in output and "403 Forbidden" in output, output[-2000:]
    assert _run_ids(federation) == before


def test_operator_registers_lists_and_runs_and_the_public_supernodes_train(federation: LocalFederation, tmp_path: Path) -> None:
    late = federation.new_key("late-node")
    registered = _registered_ids(federation)
    run = _script("register_nodes.sh", "--superlink", federation.control_address, "--ca", str(federation.certs / "ca.crt"),
                  "--connection", federation.connection, "--flwr-home", str(federation.operator_home), f"{late}.pub",
                  env=federation.env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(_registered_ids(federation) - registered) == 1
    before = _run_ids(federation)  # flwr ls works for the operator

    online = {int(n["node-id"]) for n in federation.online_nodes()}
    assert len(online) == len(SITES)  # the SuperNodes connected to the public address
    config = {**RUN, "num-server-rounds": 1, "eval-max-examples": 100, "run-name": "control-api", "output-dir": str(tmp_path / "runs")}
    result = federation.run_app(config, timeout=300)
    assert result.ok, f"run {result.run_id}: flwr run {result.returncode}, {result.status}:\n{result.output[-3000:]}"
    assert _run_ids(federation) == sorted([*before, result.run_id])
    records = read_metrics(tmp_path / "runs" / "control-api")
    assert [r["round"] for r in records] == [0, 1]
    assert set(records[1]["accepted"]) == online
