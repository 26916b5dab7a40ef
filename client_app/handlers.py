"""The node's message handlers: answer capacity queries, train the sub-model of the blocks a node is
sent, evaluate the full global model on the node's own test split, and secure aggregation's stages.

``app`` is a ClientApp of these handlers. The node's warm worker (client_app/worker.py) runs it for
every message; the thin ClientApp (client_app/app.py) runs it in process when the worker is off.

Every reply carries where the node's time went (``t-*`` metrics): process start-up and this module's
imports on the first message of a process, then backbone, data, training or evaluation.
"""

from __future__ import annotations

import time

_MODULE_START = time.time()  # before the imports below: what this app costs to import

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from fedra_core import wire  # noqa: E402

from client_app.node import NodeRuntime  # noqa: E402
from client_app.timing import Stopwatch, process_start  # noqa: E402

_STARTUP = {"startup": _MODULE_START - process_start(), "imports": time.time() - _MODULE_START}

app = ClientApp()


def _stopwatch() -> Stopwatch:
    """A stopwatch for one message; the first message of a process also carries start-up and imports."""
    startup = dict(_STARTUP)
    _STARTUP.clear()
    return Stopwatch(startup)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Reply with this node's capacity, domain, example counts and backbone fingerprint."""
    node = NodeRuntime.from_context(context)
    data = node.data
    partition = node.data_spec.partition_id
    metrics = MetricRecord(
        {
            wire.CAPACITY: node.capacity,
            wire.PARTITION_ID: -1 if partition is None else partition,
            wire.NUM_TRAIN: len(data.train),
            wire.NUM_TEST: len(data.test),
        }
    )
    config = ConfigRecord(
        {wire.FINGERPRINT: node.backbone.fingerprint, wire.DEVICE: str(node.device), wire.DOMAIN: data.domain, wire.EVAL_SET: data.eval_set}
    )
    return Message(RecordDict({wire.METRICS: metrics, wire.CONFIG: config}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Build the sub-model of the received blocks from the local backbone, load the received LoRA
    state, train it, run the method's client step (FedRA's head calibration, on the rest of the
    global state sent read-only) and reply with the trained state, example count, loss and current
    capacity."""
    from fedra_core.client_round import train_client_round

    clock = _stopwatch()
    node = NodeRuntime.from_context(context)
    config = msg.content[wire.CONFIG]
    node.check_fingerprint(str(config[wire.FINGERPRINT]))
    clock.lap("backbone")
    train_data = node.data.train
    clock.lap("data")
    server_round = int(config[wire.SERVER_ROUND])
    received = msg.content[wire.ARRAYS].to_torch_state_dict()
    read_only = msg.content[wire.CONTEXT].to_torch_state_dict() if wire.CONTEXT in msg.content else {}
    state, result = train_client_round(
        node.recipe, [int(b) for b in config[wire.BLOCKS]], received, read_only,
        train_data, node.capacity, node.cfg.train_settings(), dict(config), node.device,
        seed=(int(config[wire.SEED]) * 1_000_003 + server_round * 10_007 + node.seed_offset) % 2**63, lap=clock.lap,
    )
    if wire.SECAGG in msg.content:  # secure aggregation: the delta, clipped, quantised and masked
        from client_app.secure_aggregation import masked_arrays

        arrays = masked_arrays(msg, context, state, received, result.num_examples)
        clock.lap("mask")
    else:
        arrays = ArrayRecord(state)
    metrics = MetricRecord(
        {
            wire.NUM_EXAMPLES: result.num_examples,
            wire.EXAMPLES_SEEN: result.examples_seen,
            wire.STEPS: result.steps,
            wire.TRAIN_LOSS: result.loss,
            wire.CAPACITY: node.capacity,
            **clock.metrics(),
        }
    )
    return Message(RecordDict({wire.ARRAYS: arrays, wire.METRICS: metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model (the blocks the message names, else all) on this node's test
    split, holding at most its capacity of blocks at a time; reply with accuracy, loss, example,
    correct and target counts (targets: the response tokens of a causal LM)."""
    from fedra_core.evaluation import evaluate_global_model

    clock = _stopwatch()
    node = NodeRuntime.from_context(context)
    config = msg.content[wire.CONFIG]
    node.check_fingerprint(str(config[wire.FINGERPRINT]))
    clock.lap("backbone")
    test = node.data.test
    clock.lap("data")
    blocks = [int(b) for b in config[wire.BLOCKS]] if wire.BLOCKS in config else None
    result = evaluate_global_model(
        node.recipe, msg.content[wire.ARRAYS].to_torch_state_dict(), test,
        node.capacity, node.cfg.eval_batch_size, node.device, node.cfg.bf16, blocks,
    )
    clock.lap("evaluate")
    metrics = MetricRecord(
        {wire.ACCURACY: result.accuracy, wire.LOSS: result.loss, wire.NUM_EXAMPLES: result.num_examples, wire.CORRECT: result.correct,
         wire.TARGETS: result.targets, **clock.metrics()}
    )
    return Message(RecordDict({wire.METRICS: metrics}), reply_to=msg)


# --- secure aggregation: the extra stages of a round (client_app/secure_aggregation.py) ---
@app.query(wire.SecAgg.SETUP)
def secagg_setup(msg: Message, context: Context) -> Message:
    """Make this round's key pairs; reply with the public halves."""
    from client_app import secure_aggregation

    return secure_aggregation.setup(msg, context)


@app.query(wire.SecAgg.SHARES)
def secagg_shares(msg: Message, context: Context) -> Message:
    """Reply with this node's Shamir shares, one encrypted share per other node."""
    from client_app import secure_aggregation

    return secure_aggregation.share_keys(msg, context)


@app.query(wire.SecAgg.UNMASK)
def secagg_unmask(msg: Message, context: Context) -> Message:
    """Reply with the shares that unmask the survivors' sum."""
    from client_app import secure_aggregation

    return secure_aggregation.unmask(msg, context)
