"""Run a federation in one process, without Ray or network: the real ServerApp logic and ClientApp,
with a Grid that delivers each message by calling the ClientApp directly.

Useful for debugging, for benchmarks that must not measure Ray, and for tests (``intercept`` can
replace or drop replies to play a failing or cheating node):

    python -m runners.local --num-nodes 6 --run-config "num-server-rounds=3"
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity


class InProcessGrid(Grid):
    """A Grid whose nodes live in this process.

    Nodes are (node_id -> node_config); ``intercept(node_id, message, reply)`` may replace or drop
    (return None) a reply. Every message sent is kept in ``sent``.
    """

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: dict[int, dict],
        run_config: dict,
        intercept: Callable[[int, Message, Message], Message | None] | None = None,
    ) -> None:
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
        self.client_app = client_app
        self.contexts = {
            nid: Context(run_id=1, node_id=nid, node_config=cfg, state=RecordDict(), run_config=run_config)
            for nid, cfg in node_configs.items()
        }
        self.intercept = intercept
        self.sent: list[Message] = []
        self._replies: dict[str, list[Message]] = {}  # message id -> its replies, until pulled

    def set_run(self, run) -> None:  # noqa: D102
        pass

    @property
    def run(self):  # noqa: D102
        raise NotImplementedError

    def create_message(self, *args, **kwargs):  # noqa: D102
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.contexts)

    def get_nodes(self):  # noqa: D102
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Run the ClientApp on each message now (a raised exception becomes an error reply, as in
        Flower) and keep the replies for :meth:`pull_messages`; return the messages' ids."""
        ids = []
        for message in messages:
            self.sent.append(message)
            message.metadata.__dict__["_message_id"] = message.object_id  # as Flower's grids stamp it on push
            ids.append(message.object_id)
            nid = message.metadata.dst_node_id
            try:
                reply = self.client_app(message, self.contexts[nid])
            except Exception as exc:  # the real runtime turns ClientApp exceptions into error replies
                reply = Message(Error(code=1, reason=f"{exc.__class__.__name__}: {exc}"), reply_to=message)
            if self.intercept is not None:
                reply = self.intercept(nid, message, reply)
            kept = self._replies.setdefault(message.object_id, [])
            if reply is not None:
                kept.append(reply)
            if reply is None or reply.metadata.reply_to_message_id != message.object_id:
                # unanswered: the SuperLink's stand-in once the message expires (read as no reply)
                kept.append(Message(Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason="no reply"), reply_to=message))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """Return (once) the kept replies to ``message_ids``."""
        return [reply for i in list(message_ids) for reply in self._replies.pop(i, [])]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages`` and return every reply."""
        return self.pull_messages(self.push_messages(messages))


def load_component(kind: str) -> ClientApp:
    """Import the app component ``kind`` (``clientapp``, ``serverapp``) that ``pyproject.toml`` names in
    ``[tool.flwr.app.components]``, as ``flwr run`` does; the server package imports no client code."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
        ref = tomllib.load(f)["tool"]["flwr"]["app"]["components"][kind]
    module, attribute = ref.split(":")
    return getattr(importlib.import_module(module), attribute)


def local_federation(run_config: dict, nodes: Mapping[int, dict], intercept=None) -> tuple[Path, InProcessGrid]:
    """Run the app's federation in process on ``nodes`` (node id -> node-config); return the run
    folder and the grid (it keeps every message sent). ``intercept`` as :class:`InProcessGrid`'s."""
    from server_app.app import run_federation, setup_logging

    setup_logging()
    grid = InProcessGrid(load_component("clientapp"), dict(nodes), run_config, intercept)
    return run_federation(grid, run_config), grid


def run_local(run_config: dict, num_nodes: int, intercept=None) -> Path:
    """Run the app's federation in process with ``num_nodes`` nodes (partition ids 0..n-1); return the run folder."""
    nodes = {1000 + i: {"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)}
    return local_federation(run_config, nodes, intercept)[0]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code (2: bad config or checkpoint, 1: the run
    could not go on; one line on stderr, no traceback)."""
    import argparse

    from runners.cli import one_line_errors, parse_run_config

    parser = argparse.ArgumentParser(description="Run a FedRA federation in one process (no Ray, no network).")
    parser.add_argument("--num-nodes", type=int, default=6)
    parser.add_argument("--run-config", default="", help="overrides, e.g. \"num-server-rounds=5 method='depthfl'\"")
    args = parser.parse_args(argv)

    def run() -> int:
        run_dir = run_local(parse_run_config(args.run_config), args.num_nodes)
        print((run_dir / "summary.md").read_text())
        return 0

    return one_line_errors(run)


if __name__ == "__main__":
    raise SystemExit(main())
