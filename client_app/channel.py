"""The local channel between the thin ClientApp and the node worker: where a worker lives, how a
message is framed and how each side makes sure the other is the same local user.

A worker lives in a private folder ``<node cache>/node-workers/<key>`` (mode 0700, owned by the
node's user) holding its Unix socket ``sock`` (0600), a 32-byte ``secret`` (0600), its ``pid`` and
``worker.log``. The key is a hash of the node-config (without the node-worker keys), the code of
``client_app`` and ``fedra_core``, the Python executable and the host name, so a node started with other settings or
a new version of the code gets its own worker. Three locks: the folder's mode keeps other users from
reaching the socket, the worker checks the peer's uid (SO_PEERCRED) and the connection must start
with the secret. Frames are an 8-byte big-endian length and the bytes; messages travel as Flower's
own protobuf serialisation (no pickle). Standard library only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import stat
import struct
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from client_app.worker_config import KEYS as WORKER_KEYS

PROTOCOL = 1
MAX_FRAME = 1 << 34  # 16 GiB: a frame announcing more is not ours
SOCKET = "sock"
SECRET = "secret"
PID = "pid"
LOG = "worker.log"
MESSAGES = "messages.jsonl"
_UNIX_PATH_MAX = 100  # sun_path holds 108 bytes; keep a margin
_PEERCRED = struct.Struct("3i")  # pid, uid, gid


class ChannelError(OSError):
    """The channel is unusable (bad folder permissions, a peer that is not ours, a broken frame)."""


def code_root() -> Path:
    """Return the folder that holds the ``client_app`` package (what the worker must import)."""
    return Path(__file__).resolve().parent.parent


def code_hash(root: Path | None = None) -> str:
    """Return a sha256 over the Python files of ``client_app`` and ``fedra_core`` under ``root``."""
    root = root or code_root()
    digest = hashlib.sha256()
    for package in ("client_app", "fedra_core"):
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def worker_key(node_config: Mapping[str, object], code: str) -> str:
    """Return the 16-hex-digit key of the worker serving ``node_config`` with code hash ``code``."""
    items = sorted((str(k), str(v)) for k, v in node_config.items() if k not in WORKER_KEYS)
    # the host name too: containers sharing a cache volume never share a worker
    text = json.dumps({"node-config": items, "code": code, "python": sys.executable, "host": socket.gethostname()})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def worker_dir(cache: Path, key: str) -> Path:
    """Return the private folder of worker ``key`` under the node's cache ``cache``, created 0700 and
    checked; when its socket path would be too long for a Unix socket, a folder under the system's temp
    directory that only this user can enter is used instead."""
    folder = cache / "node-workers" / key
    if len(str(folder / SOCKET).encode()) > _UNIX_PATH_MAX:
        base = Path(tempfile.gettempdir()) / f"fedra-node-workers-{os.getuid()}"
        base.mkdir(mode=0o700, exist_ok=True)
        check_private(base)
        folder = base / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir(mode=0o700, exist_ok=True)
    check_private(folder)
    return folder


def check_private(folder: Path) -> None:
    """Raise ChannelError unless ``folder`` is a real directory owned by this user with mode 0700."""
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise ChannelError(f"node worker folder {folder} is not a directory (a link or a file); remove it")
    if info.st_uid != os.getuid():
        raise ChannelError(f"node worker folder {folder} is owned by uid {info.st_uid}, not this user ({os.getuid()}); remove it")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ChannelError(
            f"node worker folder {folder} has mode {stat.S_IMODE(info.st_mode):o}: other users could reach the worker; "
            "it must be 700 (chmod 700 it or remove it)"
        )


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by this user only, atomically (a reader sees all or nothing)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def peer_uid(conn: socket.socket) -> int:
    """Return the uid of the process at the other end of the Unix socket ``conn``."""
    _pid, uid, _gid = _PEERCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    return uid


def same_secret(given: bytes, expected: bytes) -> bool:
    """Compare two secrets in constant time."""
    return hmac.compare_digest(given, expected)


def send_frames(conn: socket.socket, *frames: bytes) -> None:
    """Send each of ``frames`` as length + bytes."""
    for frame in frames:
        conn.sendall(struct.pack("!Q", len(frame)))
        conn.sendall(frame)


def recv_frame(conn: socket.socket, limit: int = MAX_FRAME) -> bytes:
    """Receive one frame; ChannelError when the peer closed the connection or announces over ``limit`` bytes."""
    (size,) = struct.unpack("!Q", _recv_exact(conn, 8))
    if size > limit:
        raise ChannelError(f"frame of {size} bytes announced; at most {limit} allowed")
    return _recv_exact(conn, size)


def send_json(conn: socket.socket, header: Mapping[str, object]) -> None:
    """Send ``header`` as one JSON frame."""
    send_frames(conn, json.dumps(header).encode())


def recv_json(conn: socket.socket) -> dict:
    """Receive one JSON frame (at most 1 MiB) and return it as a dict."""
    data = recv_frame(conn, 1 << 20)
    try:
        header = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ChannelError("a header frame that is not JSON") from None
    if not isinstance(header, dict):
        raise ChannelError("a header frame that is not a JSON object")
    return header


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = conn.recv(min(size - len(chunks), 1 << 22))
        if not chunk:
            raise ChannelError(f"connection closed after {len(chunks)} of {size} bytes")
        chunks += chunk
    return bytes(chunks)
