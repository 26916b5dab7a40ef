"""The FedRA ClientApp: answers capacity queries, trains the sub-model of the blocks it is sent and
evaluates the full global model on the node's own test split.

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
    state, train it (with ``head-calibration-steps``, then calibrate the head on full-depth features
    from the rest of the global state sent read-only) and reply with the trained state, example
    count, loss and current capacity."""
    from fedra_core.lora import load_trainable_state, trainable_state
    from fedra_core.trainable import build_trainable_model
    from fedra_core.training import train_local

    clock = _stopwatch()
    node = NodeRuntime.from_context(context)
    config = msg.content[wire.CONFIG]
    node.check_fingerprint(str(config[wire.FINGERPRINT]))
    clock.lap("backbone")
    train_data = node.data.train
    clock.lap("data")
    blocks = [int(b) for b in config[wire.BLOCKS]]
    method, family = node.method, node.backbone.family
    model = build_trainable_model(node.backbone, blocks, node.cfg.lora(), method, str(node.device))
    load_trainable_state(model, msg.content[wire.ARRAYS].to_torch_state_dict())
    server_round = int(config[wire.SERVER_ROUND])
    seed = (int(config[wire.SEED]) * 1_000_003 + server_round * 10_007 + node.seed_offset) % 2**63
    round_config = dict(config)

    def loss_fn(model, inputs, labels):
        return method.loss(model, family, inputs, labels, round_config)

    result = train_local(model, train_data, node.cfg.train_settings(), node.device, seed=seed, loss_fn=loss_fn)
    state = {k: v.to("cpu") for k, v in trainable_state(model).items()}
    del model
    clock.lap("train")
    if node.cfg.head_calibration_steps and len(blocks) < node.backbone.num_layers:
        # FedRA option: the rest of the global state came read-only with the message (a client that
        # holds every block already trained its head on full-depth features)
        from fedra_core.calibration import calibrate_head

        full = {**msg.content[wire.CONTEXT].to_torch_state_dict(), **state}
        state.update(calibrate_head(
            node.backbone, full, node.cfg.lora(), method, train_data, node.capacity, node.cfg.train_settings(),
            node.cfg.head_calibration_steps, node.device, seed=seed + 1,
        ))
        clock.lap("calibrate")
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
    return Message(RecordDict({wire.ARRAYS: ArrayRecord(state), wire.METRICS: metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model (the blocks the message names, else all) on this node's test
    split, holding at most its capacity of blocks at a time; reply with accuracy, loss, example and
    correct counts."""
    from fedra_core.evaluation import evaluate_global_model

    clock = _stopwatch()
    node = NodeRuntime.from_context(context)
    config = msg.content[wire.CONFIG]
    node.check_fingerprint(str(config[wire.FINGERPRINT]))
    clock.lap("backbone")
    test = node.data.test
    clock.lap("data")
    cfg = node.cfg
    blocks = [int(b) for b in config[wire.BLOCKS]] if wire.BLOCKS in config else None
    result = evaluate_global_model(
        node.backbone, msg.content[wire.ARRAYS].to_torch_state_dict(), cfg.lora(), node.method, test,
        node.capacity, cfg.eval_batch_size, node.device, cfg.bf16, blocks,
    )
    clock.lap("evaluate")
    metrics = MetricRecord(
        {wire.ACCURACY: result.accuracy, wire.LOSS: result.loss, wire.NUM_EXAMPLES: result.num_examples, wire.CORRECT: result.correct,
         **clock.metrics()}
    )
    return Message(RecordDict({wire.METRICS: metrics}), reply_to=msg)
