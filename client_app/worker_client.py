"""The thin ClientApp's side of the node worker: find the worker of this node-config, start it when
none answers, send it the message and return its reply; a worker that crashed or hung is killed,
restarted with one log line and the message retried once.

Imports flwr and the standard library only, so that Flower's per-message ClientApp process stays
light: torch, the backbone and the data live in the worker (client_app/worker.py).
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from logging import WARNING
from pathlib import Path

from flwr.app import Context, Message
from flwr.common.logger import log
from flwr.common.serde import context_to_proto, message_to_proto, recorddict_from_proto
from flwr.proto.recorddict_pb2 import RecordDict as RecordDictProto

from client_app import channel
from client_app.worker_config import WorkerSettings, per_message_process

START_TIMEOUT = 300.0  # seconds for a new worker to open its socket (imports on a loaded machine)


class WorkerError(RuntimeError):
    """The node's handler failed in the worker (the message is the node's own error line)."""


class WorkerLost(ConnectionError):
    """The worker died or hung while it had the message."""


def forward(message: Message, context: Context, settings: WorkerSettings) -> tuple[Message, float]:
    """Answer ``message`` in this node's worker; return the reply and the seconds the handler took in
    the worker. Retries once in a fresh worker when the first one is lost; WorkerError carries a
    handler's own error."""
    from fedra_core.cache import cache_dir

    folder = channel.worker_dir(cache_dir(), channel.worker_key(context.node_config, channel.code_hash()))
    payload = (message_to_proto(message).SerializeToString(), context_to_proto(context).SerializeToString())
    for attempt in (1, 2):
        try:
            with _connection(folder, settings) as conn:
                return _exchange(conn, payload, message, context, settings.timeout)
        except WorkerLost as exc:
            pid = worker_pid(folder)
            stop_worker(folder)
            # a dying process's socket still accepts until its files close: make the retry start anew
            (folder / channel.SOCKET).unlink(missing_ok=True)
            if attempt == 2:
                raise WorkerLost(f"node worker lost again ({exc}); the message fails") from None
            log(WARNING, "node worker %s lost (%s): restarted, retrying the %s message once",
                pid, exc, message.metadata.message_type)
    raise AssertionError("unreachable")


def _exchange(conn: socket.socket, payload: tuple[bytes, bytes], message: Message, context: Context,
              timeout: float) -> tuple[Message, float]:
    conn.settimeout(timeout)
    try:
        channel.send_json(conn, {"protocol": channel.PROTOCOL, "kind": "message"})
        channel.send_frames(conn, *payload)
        header = channel.recv_json(conn)
        if not header.get("ok"):
            raise WorkerError(str(header.get("error", "the node worker failed without a reason")))
        content = recorddict_from_proto(RecordDictProto.FromString(channel.recv_frame(conn)))
        state = channel.recv_frame(conn)
    except TimeoutError:
        raise WorkerLost(f"no reply within node-worker-timeout = {timeout:g} s") from None
    except (channel.ChannelError, ConnectionError) as exc:
        raise WorkerLost(str(exc)) from None
    from flwr.common.serde import context_from_proto
    from flwr.proto.message_pb2 import Context as ContextProto

    context.state = context_from_proto(ContextProto.FromString(state)).state
    return Message(content, reply_to=message), float(header.get("seconds", 0.0))


@contextmanager
def _connection(folder: Path, settings: WorkerSettings) -> Iterator[socket.socket]:
    """Yield an authenticated connection to the worker in ``folder``, starting one when none answers."""
    conn = _connect(folder)
    if conn is None:
        with _lock(folder):
            conn = _connect(folder)  # another message of this node may have started it meanwhile
            if conn is None:
                _start(folder, settings)
                conn = _connect(folder, wait=START_TIMEOUT)
        if conn is None:
            raise WorkerLost(f"the node worker did not start; see {folder / channel.LOG}")
    with conn:
        yield conn


def _connect(folder: Path, wait: float = 0.0) -> socket.socket | None:
    deadline = time.monotonic() + wait
    while True:
        try:
            secret = (folder / channel.SECRET).read_bytes()
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(str(folder / channel.SOCKET))
                channel.send_frames(conn, secret)
            except OSError:
                conn.close()
                raise
            return conn
        except OSError:
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)


def _start(folder: Path, settings: WorkerSettings) -> None:
    """Start a worker for ``folder`` that outlives this process; it serves until its owner is gone (the
    SuperExec that started this per-message ClientApp process, else this process) or it is idle for
    ``settings.idle`` seconds."""
    owner = os.getppid() if per_message_process() else os.getpid()
    stop_worker(folder)
    (folder / channel.SOCKET).unlink(missing_ok=True)
    channel.write_private(folder / channel.SECRET, os.urandom(32))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(channel.code_root()), env.get("PYTHONPATH", "")) if p)
    log_fd = os.open(folder / channel.LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        subprocess.Popen(
            [sys.executable, "-m", "client_app.worker", "--dir", str(folder), "--owner", str(owner),
             "--idle", str(settings.idle)],
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, env=env, close_fds=True, cwd=str(folder),
        )
    finally:
        os.close(log_fd)


@contextmanager
def _lock(folder: Path) -> Iterator[None]:
    fd = os.open(folder / "lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def worker_folders(cache: Path) -> list[Path]:
    """Return the worker folders of the node cache ``cache`` (and of this user's temp-folder fallback)."""
    import tempfile

    roots = [cache / "node-workers", Path(tempfile.gettempdir()) / f"fedra-node-workers-{os.getuid()}"]
    return sorted(p for root in roots if root.is_dir() for p in root.iterdir() if p.is_dir())


def worker_pid(folder: Path) -> int | None:
    """Return the pid of the live worker of ``folder``, or None (no pid file, or its process is not that worker)."""
    try:
        pid = int((folder / channel.PID).read_text())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    if b"client_app.worker" in cmdline and str(folder).encode() in cmdline:
        return pid
    return None


def stop_worker(folder: Path, grace: float = 5.0) -> None:
    """Stop the worker of ``folder`` if one runs: SIGTERM, then SIGKILL after ``grace`` seconds."""
    pid = worker_pid(folder)
    if pid is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
            if sig == signal.SIGTERM:
                os.kill(pid, signal.SIGCONT)  # a frozen worker acts on SIGTERM only once thawed
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if worker_pid(folder) is None:
                return
            time.sleep(0.05)
