"""The ClientApp named by pyproject.toml: a thin front of the node's handlers (client_app/handlers.py).

Flower starts a fresh ``flwr-clientapp`` process for every message of a deployed node. Under it
(``node-worker`` auto, the default, or on) this app forwards the message to the node's warm worker
(client_app/worker.py), which keeps torch, the backbone and the data loaded, and returns the
worker's reply; it imports flwr and the standard library only. With ``node-worker='off'``, and
wherever the ClientApp stays loaded anyway (Flower's simulation engine, the in-process runner), the
handlers run in this process. Either way the reply is the handlers' own.

A forwarded reply's ``t-*`` metrics add this process's start-up and imports to the worker's, and
``t-forward``: what the hand-over to the worker cost (serialisation and the local socket).
"""

from __future__ import annotations

import time

_MODULE_START = time.time()  # before the imports below: what this app costs to import

from flwr.app import Context, Message  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from client_app.timing import process_start  # noqa: E402
from client_app.worker_config import WorkerSettings  # noqa: E402
from fedra_core import wire  # noqa: E402

_STARTUP = {"startup": _MODULE_START - process_start(), "imports": time.time() - _MODULE_START}

app = ClientApp()


def handle(message: Message, context: Context) -> Message:
    """Answer ``message`` in the node's worker, or in this process when the worker is off; return the reply."""
    settings = WorkerSettings.from_node_config(context.node_config)
    if not settings.enabled:
        from client_app import handlers

        return handlers.app(message, context)
    from client_app.worker_client import forward

    start = time.perf_counter()
    reply, handler_seconds = forward(message, context, settings)
    if wire.METRICS in reply.content:
        metrics = reply.content[wire.METRICS]
        for phase, seconds in {**_STARTUP, "forward": time.perf_counter() - start - handler_seconds}.items():
            key = wire.TIME_PREFIX + phase
            metrics[key] = float(metrics.get(key, 0.0)) + seconds
    _STARTUP.clear()  # a process starts once (Flower's flwr-clientapp answers a single message anyway)
    return reply


@app.query()
def query(msg: Message, context: Context) -> Message:
    """The node's capacity, domain, example counts and backbone fingerprint (handlers.query)."""
    return handle(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received blocks on the node's data and reply with them (handlers.train)."""
    return handle(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the node's test split (handlers.evaluate)."""
    return handle(msg, context)


@app.query(wire.SecAgg.SETUP)
def secagg_setup(msg: Message, context: Context) -> Message:
    """Secure aggregation: this round's key pairs (handlers.secagg_setup)."""
    return handle(msg, context)


@app.query(wire.SecAgg.SHARES)
def secagg_shares(msg: Message, context: Context) -> Message:
    """Secure aggregation: the node's encrypted Shamir shares (handlers.secagg_shares)."""
    return handle(msg, context)


@app.query(wire.SecAgg.UNMASK)
def secagg_unmask(msg: Message, context: Context) -> Message:
    """Secure aggregation: the shares that unmask the survivors' sum (handlers.secagg_unmask)."""
    return handle(msg, context)
