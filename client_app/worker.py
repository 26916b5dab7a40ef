"""The warm node worker: one long-lived process per node-config on a SuperNode's host that answers
the ClientApp's messages with the handlers of client_app/handlers.py, keeping torch, the backbone, the
node's data and its caches loaded between messages and runs.

The thin ClientApp (client_app/app.py) starts it on its node's first message
(client_app/worker_client.py) and talks to it over the private channel of client_app/channel.py. It
serves one message at a time and exits when the process that started the ClientApp (Flower's
SuperExec) is gone, after ``node-worker-idle`` seconds without a message, or on SIGTERM / SIGINT.

    python -m client_app.worker --list          # the workers of this node cache: pid, alive, messages, memory
    python -m client_app.worker --stop          # stop them (a new message starts a fresh one)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from client_app import channel

POLL = 1.0  # seconds between the checks of the owner and the idle limit


class Worker:
    """One worker: its folder, secret and listening socket, and the handlers it runs."""

    def __init__(self, folder: Path, owner: int | None, idle: float) -> None:
        channel.check_private(folder)
        self.folder = folder
        self.owner = owner
        self.idle = idle
        self.secret = (folder / channel.SECRET).read_bytes()
        self.served = 0
        # the heavy imports before the socket opens: a client that connects finds the worker ready, so
        # its node-worker-timeout covers the message alone
        from client_app import handlers

        self.handlers = handlers
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        path = folder / channel.SOCKET
        path.unlink(missing_ok=True)
        old = os.umask(0o177)  # the socket file is the user's alone
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old)
        self.listener.listen(8)
        self.listener.settimeout(POLL)
        channel.write_private(folder / channel.PID, str(os.getpid()).encode())

    def serve(self) -> str:
        """Answer connections until the owner is gone or the worker was idle too long; return why it stopped."""
        last = time.monotonic()
        while True:
            if self.owner is not None and not _alive(self.owner):
                return f"its owner process {self.owner} is gone"
            if time.monotonic() - last > self.idle:
                return f"idle for {self.idle:g} s"
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                self._answer(conn)
            last = time.monotonic()

    def close(self) -> None:
        """Close the socket and remove the socket and pid files (when they are still this worker's)."""
        self.listener.close()
        pid_file = self.folder / channel.PID
        try:
            if pid_file.read_text() == str(os.getpid()):
                pid_file.unlink()
                (self.folder / channel.SOCKET).unlink(missing_ok=True)
        except OSError:
            pass

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(60.0)  # a client of ours sends its request at once; the handler runs without a limit
        try:
            uid = channel.peer_uid(conn)
            if uid != os.getuid():
                _log(f"refused a connection from uid {uid} (this worker serves uid {os.getuid()} only)")
                return
            if not channel.same_secret(channel.recv_frame(conn, 64), self.secret):
                _log("refused a connection that did not present this worker's secret")
                return
            header = channel.recv_json(conn)
            if header.get("protocol") != channel.PROTOCOL:
                channel.send_json(conn, {"ok": False, "error": f"protocol {header.get('protocol')!r}: this worker speaks {channel.PROTOCOL}"})
            elif header.get("kind") == "message":
                message, context = channel.recv_frame(conn), channel.recv_frame(conn)
                conn.settimeout(None)
                self._run(conn, message, context)
            else:
                channel.send_json(conn, {"ok": False, "error": f"request kind {header.get('kind')!r}: allowed 'message'"})
        except (OSError, ValueError) as exc:
            _log(f"dropped a connection: {exc}")

    def _run(self, conn: socket.socket, message_bytes: bytes, context_bytes: bytes) -> None:
        from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, recorddict_to_proto
        from flwr.proto.message_pb2 import Context as ContextProto
        from flwr.proto.message_pb2 import Message as MessageProto

        start = time.perf_counter()
        message = message_from_proto(MessageProto.FromString(message_bytes))
        context = context_from_proto(ContextProto.FromString(context_bytes))
        kind = message.metadata.message_type
        try:
            reply = self.handlers.app(message, context)
        except Exception as exc:  # the node's error goes back to the ClientApp, which raises it as in-process
            _log(f"{kind}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            self._record(kind, time.perf_counter() - start, error=type(exc).__name__)
            channel.send_json(conn, {"ok": False, "error": str(exc), "error-type": type(exc).__name__})
            return
        seconds = time.perf_counter() - start
        self._record(kind, seconds)
        channel.send_json(conn, {"ok": True, "seconds": seconds})
        channel.send_frames(conn, recorddict_to_proto(reply.content).SerializeToString(),
                            context_to_proto(context).SerializeToString())

    def _record(self, kind: str, seconds: float, error: str = "") -> None:
        """Count the message and append it to messages.jsonl: kind, seconds, the error's type if it
        failed, and the worker's memory after it."""
        self.served += 1
        path = self.folder / channel.MESSAGES
        if path.exists() and path.stat().st_size > 1 << 20:  # keep the last MiB's worth, not the worker's life
            path.replace(path.with_suffix(".jsonl.1"))
        with path.open("a") as f:
            entry = {"time": time.time(), "pid": os.getpid(), "kind": kind, "seconds": seconds, "served": self.served,
                     **({"error": error} if error else {}), **_memory()}
            f.write(json.dumps(entry) + "\n")


def _memory() -> dict[str, float]:
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return {"rss-mib": rss_pages * page / 2**20, "peak-mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _log(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} worker {os.getpid()}: {line}", file=sys.stderr, flush=True)


def _stop_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def list_workers(cache: Path) -> list[dict[str, Any]]:
    """Return one entry per worker folder under ``cache``: folder, pid, alive, and its last message record."""
    from client_app import worker_client

    out = []
    for folder in worker_client.worker_folders(cache):
        pid = worker_client.worker_pid(folder)
        entry: dict[str, Any] = {"folder": str(folder), "pid": pid, "alive": pid is not None}
        log = folder / channel.MESSAGES
        if log.exists() and log.read_text().strip():
            entry["last"] = json.loads(log.read_text().strip().splitlines()[-1])
        out.append(entry)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run a worker (``--dir``), or list / stop the workers of the node cache; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="the worker's private folder (the ClientApp passes it)")
    parser.add_argument("--owner", type=int, default=None, help="exit when this process is gone")
    parser.add_argument("--idle", type=float, default=900.0, help="exit after this many seconds without a message")
    parser.add_argument("--list", action="store_true", help="list this node cache's workers ($FEDRA_CACHE)")
    parser.add_argument("--stop", action="store_true", help="stop this node cache's workers")
    args = parser.parse_args(argv)
    if args.list or args.stop:
        from client_app import worker_client
        from fedra_core.cache import cache_dir

        for entry in list_workers(cache_dir()):
            if args.stop and entry["pid"] is not None:
                worker_client.stop_worker(Path(entry["folder"]))
                entry["alive"] = False
            print(json.dumps(entry))
        return 0
    if args.dir is None:
        parser.error("give --dir (or --list / --stop)")
    signal.signal(signal.SIGTERM, _stop_signal)
    signal.signal(signal.SIGINT, _stop_signal)
    worker = None
    why = "stopped by a signal"
    try:
        worker = Worker(args.dir, args.owner, args.idle)
        _log(f"serving {args.dir} (owner {args.owner}, idle limit {args.idle:g} s)")
        why = worker.serve()
    finally:
        if worker is not None:
            worker.close()
        _log(f"exiting: {why}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
