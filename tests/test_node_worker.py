"""The warm node worker as real processes: the thin ClientApp forwards messages to a worker it starts,
the replies equal the in-process handlers' bit for bit, one worker serves a node's messages across
rounds, a crashed or hung worker is replaced and the message retried, and no other local user can
reach it. (The deployment tests run every deployed message through it: tests/test_deploy.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from app_helpers import TINY_RUN, run_inprocess
from client_app import channel, worker_client
from client_app.worker_config import WorkerConfigError, WorkerSettings
from fedra_core.cache import cache_dir

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def _stop_workers():
    """Stop every worker this module started (they would otherwise serve until pytest exits); the tests
    share them, as a node's messages do."""
    yield
    for folder in worker_client.worker_folders(cache_dir()):
        worker_client.stop_worker(folder)


def _context(**node_config) -> Context:
    return Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-threads": 1, **node_config},
                   state=RecordDict(), run_config=dict(TINY_RUN))


def _query() -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    message = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=7, message_type="query")
    message.metadata.__dict__["_message_id"] = message.object_id  # as Flower's grids stamp it on push
    return message


def _folder(context: Context) -> Path:
    return channel.worker_dir(cache_dir(), channel.worker_key(context.node_config, channel.code_hash()))


def _served_by(folder: Path, since: float) -> list[int]:
    """The pids of the workers that answered the messages of ``folder`` since time ``since``."""
    records = [json.loads(line) for line in (folder / channel.MESSAGES).read_text().splitlines()]
    return [r["pid"] for r in records if r["time"] >= since]


def _wait(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_the_thin_clientapp_imports_neither_torch_nor_the_handlers():
    code = ("import sys, client_app.app, client_app.worker_client; "
            "print(sorted(m for m in ('torch', 'timm', 'peft', 'client_app.handlers', 'fedra_core.run_config') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


def test_bad_node_worker_values_are_one_line_errors():
    with pytest.raises(WorkerConfigError, match=r"node-config 'node-worker' = 'yes': allowed \['auto', 'on', 'off'\]"):
        WorkerSettings.from_node_config({"node-worker": "yes"})
    for key in ("node-worker-idle", "node-worker-timeout"):
        for bad in ("0", "-3", "soon", "nan"):
            with pytest.raises(WorkerConfigError, match=f"node-config '{key}' = '{bad}': must be a number of seconds > 0"):
                WorkerSettings.from_node_config({key: bad})
    assert WorkerSettings.from_node_config({"node-worker-idle": "30"}).idle == 30.0
    assert not WorkerSettings.from_node_config({}).enabled  # auto: off outside Flower's flwr-clientapp process


@pytest.mark.slow
@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure-aggregation"])
def test_a_federation_through_workers_equals_the_in_process_one_bit_for_bit(tmp_path, secure):
    overrides = {"secure-aggregation": True, "secagg-min-holders": 1} if secure else {}
    runs = {}
    start = time.time()
    for mode in ("off", "on"):
        nodes = {100 + i: {"partition-id": i, "num-threads": 1, "node-worker": mode} for i in range(3)}
        runs[mode], _, _ = run_inprocess(tmp_path / mode, nodes=nodes, **overrides)
    from safetensors.torch import load_file
    import torch

    off, on = (load_file(runs[m] / "checkpoint.safetensors") for m in ("off", "on"))
    assert off.keys() == on.keys()
    records = {m: [json.loads(line) for line in (runs[m] / "metrics.jsonl").read_text().splitlines()] for m in runs}
    losses = {m: [r.get("train-loss") for r in records[m]] for m in runs}
    if secure:  # fresh keys and stochastic rounding every run: equal within the quantisation, as plain vs secure
        assert max(float((off[k] - on[k]).abs().max()) for k in off) < 1e-5
        assert losses["on"][1:] == pytest.approx(losses["off"][1:], rel=1e-6)
    else:
        assert losses["on"] == losses["off"]
        assert all(torch.equal(off[k], on[k]) for k in off)
        assert [r["accuracy"] for r in records["on"]] == [r["accuracy"] for r in records["off"]]
    # one worker per node served all of its messages; only its first message paid the imports
    for i in range(3):
        folder = _folder(_context(**{"partition-id": i, "node-worker": "on"}))
        served = _served_by(folder, start)
        assert len(served) >= 1 + 3 + 4 and len(set(served)) == 1, served  # query, 3 trains, 4 evaluations
    timings = [r.get("train-timings", {}) for r in records["on"][2:]]
    nodes = [t for per_node in timings for node, t in per_node.items() if node != "server"]
    assert len(nodes) == 6 and all(t.get("imports", 0.0) < 0.5 and t["forward"] < 2.0 for t in nodes)


@pytest.mark.slow
def test_a_changed_run_config_is_served_by_the_same_worker(monkeypatch):
    from client_app import handlers

    context = _context(**{"node-worker": "on"})
    settings = WorkerSettings.from_node_config(context.node_config)
    first, _ = worker_client.forward(_query(), context, settings)
    pid = worker_client.worker_pid(_folder(context))
    wider = {**TINY_RUN, "backbone-kwargs": TINY_RUN["backbone-kwargs"].replace('"embed_dim": 32', '"embed_dim": 48')}
    assert wider != TINY_RUN
    context.run_config = wider
    second, _ = worker_client.forward(_query(), context, settings)
    assert worker_client.worker_pid(_folder(context)) == pid
    expected = handlers.app(_query(), _context()).content["config"]["fingerprint"]
    assert first.content["config"]["fingerprint"] == expected
    assert second.content["config"]["fingerprint"] != expected


@pytest.mark.slow
def test_a_nodes_error_comes_back_as_its_own_line_and_the_worker_stays():
    context = _context(**{"node-worker": "on", "capacity-layers": 99})
    settings = WorkerSettings.from_node_config(context.node_config)
    with pytest.raises(worker_client.WorkerError, match=r"^node-config 'capacity-layers' = 99: must lie in 1\.\.12$"):
        worker_client.forward(_query(), context, settings)
    pid = worker_client.worker_pid(_folder(context))
    assert pid is not None
    with pytest.raises(worker_client.WorkerError):
        worker_client.forward(_query(), context, settings)
    assert worker_client.worker_pid(_folder(context)) == pid


@pytest.mark.slow
def test_a_crashed_or_hung_worker_is_replaced_and_the_message_retried_once(caplog):
    context = _context(**{"node-worker": "on", "node-worker-timeout": 10})
    settings = WorkerSettings.from_node_config(context.node_config)
    folder = _folder(context)
    worker_client.forward(_query(), context, settings)
    first = worker_client.worker_pid(folder)

    os.kill(first, signal.SIGKILL)  # dead between messages: the next message starts a new one
    os.waitpid(first, 0)  # this process started it: reaped, its socket is closed
    reply, _ = worker_client.forward(_query(), context, settings)
    second = worker_client.worker_pid(folder)
    assert reply.content["metrics"]["capacity-layers"] == 12 and second not in (None, first)

    os.kill(second, signal.SIGSTOP)  # hung: no reply within node-worker-timeout
    reply, _ = worker_client.forward(_query(), context, settings)
    third = worker_client.worker_pid(folder)
    assert reply.content["metrics"]["capacity-layers"] == 12 and third not in (None, second)

    os.kill(third, signal.SIGSTOP)  # crashes while it has the message
    threading.Timer(1.0, os.kill, (third, signal.SIGKILL)).start()
    context.node_config["node-worker-timeout"] = 600
    reply, _ = worker_client.forward(_query(), context, WorkerSettings.from_node_config(context.node_config))
    assert reply.content["metrics"]["capacity-layers"] == 12 and worker_client.worker_pid(folder) not in (None, third)
    lost = [r.getMessage() for r in caplog.records if "node worker" in r.getMessage()]
    assert len(lost) == 2 and "no reply within node-worker-timeout = 10 s" in lost[0], lost


def test_the_worker_folder_must_be_private(tmp_path):
    import shutil
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="fw-"))  # a cache path short enough for the socket to live in it
    try:
        folder = short / "node-workers" / "0123456789abcdef"
        folder.mkdir(parents=True, mode=0o755)
        folder.chmod(0o755)
        with pytest.raises(channel.ChannelError, match=r"has mode 755: other users could reach the worker; it must be 700"):
            channel.worker_dir(short, "0123456789abcdef")
        folder.chmod(0o700)
        assert channel.worker_dir(short, "0123456789abcdef") == folder
        folder.rmdir()
        folder.symlink_to(tmp_path)
        with pytest.raises(channel.ChannelError, match=r"is not a directory \(a link or a file\); remove it"):
            channel.worker_dir(short, "0123456789abcdef")
    finally:
        shutil.rmtree(short)
    long_cache = tmp_path / ("x" * 90)
    fallback = channel.worker_dir(long_cache, "0123456789abcdef")
    assert fallback.parent.name == f"fedra-node-workers-{os.getuid()}" and len(str(fallback / channel.SOCKET)) <= 100
    assert (fallback.stat().st_mode & 0o777) == 0o700 and (fallback.parent.stat().st_mode & 0o777) == 0o700
    fallback.rmdir()


def _as_nobody(action) -> str:
    """Run ``action()`` in a child process switched to the user ``nobody``; return what it returned, or
    the name and text of what it raised."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no pytest machinery, straight to os._exit
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            out = repr(action())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            out = f"{type(exc).__name__}: {exc}"
        os.write(write, out.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def _connect_and_send(path: Path, data: bytes = b"") -> bytes:
    import socket as socket_module

    with socket_module.socket(socket_module.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(data)
        return s.recv(100)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("FEDRA_SKIP_OTHER_USER") == "1",
                    reason="FEDRA_SKIP_OTHER_USER=1: switching to another user needs root (CI runs as root)")
def test_another_local_user_cannot_submit_work_or_read_replies():
    context = _context(**{"node-worker": "on"})
    settings = WorkerSettings.from_node_config(context.node_config)
    worker_client.forward(_query(), context, settings)
    folder = _folder(context)
    pid = worker_client.worker_pid(folder)
    sock, secret = folder / channel.SOCKET, folder / channel.SECRET
    # lock 1: the folder's mode (0700) keeps another user from the socket and the secret
    assert _as_nobody(lambda: _connect_and_send(sock)).startswith("PermissionError")
    assert _as_nobody(lambda: secret.read_bytes()).startswith("PermissionError")
    # lock 2: with the folder opened up, the socket file itself (0600) still refuses
    folder.chmod(0o755)
    try:
        assert _as_nobody(lambda: _connect_and_send(sock)).startswith("PermissionError")
        # lock 3: were the socket reachable, the worker checks the peer's uid before reading anything
        sock.chmod(0o666)
        frame = (32).to_bytes(8, "big") + bytes(32)
        closed = _as_nobody(lambda: _connect_and_send(sock, frame))  # closed without a word
        assert closed == "b''" or closed.startswith(("ConnectionResetError", "BrokenPipeError")), closed
        _wait(lambda: "refused a connection from uid" in (folder / channel.LOG).read_text())
    finally:
        folder.chmod(0o700)
        sock.chmod(0o600)
    # the same user without the secret gets nothing either
    import socket as socket_module

    with socket_module.socket(socket_module.AF_UNIX) as s:
        s.connect(str(sock))
        try:
            channel.send_frames(s, bytes(32))
            channel.send_json(s, {"protocol": channel.PROTOCOL, "kind": "message"})
            assert s.recv(100) == b""
        except (ConnectionResetError, BrokenPipeError):  # closed with our request unread: the same refusal
            pass
    _wait(lambda: "did not present this worker's secret" in (folder / channel.LOG).read_text())
    reply, _ = worker_client.forward(_query(), context, settings)  # still serving its own node
    assert reply.content["metrics"]["capacity-layers"] == 12 and worker_client.worker_pid(folder) == pid


def _spawn_worker(folder: Path, owner: int, idle: float) -> subprocess.Popen:
    channel.write_private(folder / channel.SECRET, os.urandom(32))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "client_app.worker", "--dir", str(folder), "--owner", str(owner),
                             "--idle", str(idle)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_worker_exits_when_idle_or_when_its_owner_is_gone(tmp_path):
    owner = subprocess.Popen(["sleep", "300"])
    # the folders worker_dir gives: under a long tmp_path (pytest-xdist's) the socket path would be too
    # long, and they move to the system's temp folder
    a, b = (channel.worker_dir(tmp_path, os.urandom(8).hex()) for _ in range(2))
    try:
        by_owner = _spawn_worker(a, owner.pid, 600)
        by_idle = _spawn_worker(b, owner.pid, 2)
        _wait(lambda: (a / channel.PID).exists(), 120)
        assert by_idle.wait(timeout=120) == 0 and "exiting: idle for 2 s" in by_idle.stderr.read()
        assert by_owner.poll() is None
        owner.kill()
        owner.wait()
        assert by_owner.wait(timeout=10) == 0 and f"exiting: its owner process {owner.pid} is gone" in by_owner.stderr.read()
        assert not (a / channel.SOCKET).exists()
    finally:
        owner.kill()
