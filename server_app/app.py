"""The FedRA ServerApp: config in, node discovery, rounds of allocation/training/aggregation, federated
evaluation (and server-side evaluation when the operator has a held-out set), checkpoint and outputs."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.superlink.grid.http_grid import HttpGrid

from fedra_core.backbones import Backbone, resolve_backbone
from fedra_core.data.federation import domains_of
from fedra_core.lora import export_peft_adapter, trainable_state
from fedra_core.run_config import ConfigError, RunConfig, load_run_config
from fedra_core.state import State, clone_state
from fedra_core.trainable import ModelRecipe
from server_app import outputs, privacy_report, tracking
from server_app.checkpoint import CHECKPOINT_NAME, ServerState, load_checkpoint, save_checkpoint
from server_app.discovery import NodeDiscovery
from server_app import secagg_strategy as secagg
from server_app.exchange import send_and_receive
from server_app.secure_aggregation import secure_train_round
from server_app.server_eval import ServerEvaluator
from server_app.strategy import FedRAStrategy
from server_app.validation import ReplyLimits

log = logging.getLogger("fedra")
app = ServerApp()


class RunError(RuntimeError):
    """A run cannot go on or did not train at all; the message is one line saying why."""


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run a FedRA federation with the run config of ``context``."""
    setup_logging()
    run_federation(grid, dict(context.run_config))


def setup_logging() -> None:
    """Send the run's progress lines ("[fedra] ...") to stdout once per process."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[fedra] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def prepare(cfg: RunConfig) -> tuple[ModelRecipe, State, ServerEvaluator | None]:
    """Resolve the backbone and the method, build the seeded initial global state and, when asked,
    the server-side evaluator. The server opens no dataset unless ``server-eval-format`` is set.

    Everything that can fail on bad configuration fails here, before any training.
    """
    tracking.require(cfg.tracking)
    privacy_report.require(cfg)
    try:
        backbone = resolve_backbone(cfg.backbone_spec())
    except ValueError as exc:
        raise ConfigError(f"config keys 'backbone' = {cfg.backbone!r}, 'backbone-weights' = {cfg.backbone_weights!r}: {exc}") from None
    cfg.check_against_backbone(backbone.num_layers)
    try:
        domains_of(cfg.data_spec())  # names only: the server opens no dataset
    except ValueError as exc:
        raise ConfigError(f"config key 'domains' = {cfg.domains!r}: {exc}") from None
    recipe = cfg.recipe(backbone)
    torch.manual_seed(cfg.seed)
    try:
        model = recipe.build(range(backbone.num_layers))
    except ValueError as exc:  # peft: a target module the backbone lacks
        raise ConfigError(f"config key 'lora-targets' = {','.join(cfg.lora_targets)!r}: {' '.join(str(exc).split())}") from None
    initial = clone_state(trainable_state(model))
    server_eval = ServerEvaluator.from_config(cfg, recipe) if cfg.server_eval_format else None
    return recipe, initial, server_eval


@dataclass
class Federation:
    """One run's moving parts: its validated config, model recipe (backbone, LoRA, method), strategy,
    node discovery, the optional server-side evaluator, the run folder, the reasons of the replies
    left out this round and the experiment tracker (opened with the run folder)."""

    grid: Grid
    cfg: RunConfig
    recipe: ModelRecipe
    strategy: FedRAStrategy
    discover: NodeDiscovery
    server_eval: ServerEvaluator | None
    run_dir: Path
    left_out: dict[str, dict[str, str]] = field(default_factory=lambda: {"train": {}, "evaluate": {}})
    tracker: tracking.Tracker = field(default_factory=tracking.NullTracker)

    @property
    def checkpoint(self) -> Path:
        """The run's checkpoint file."""
        return self.run_dir / CHECKPOINT_NAME


def run_federation(grid: Grid, run_config: dict) -> Path:
    """Run every round of a federation on ``grid``; return the run folder.

    Raises ConfigError / CheckpointError (before any training) or RunError, each one line.
    """
    cfg = load_run_config(run_config)
    fed, global_state = set_up(grid, cfg)
    try:
        if cfg.resume:
            global_state, first_round = resume(fed, global_state)
        else:
            start(fed, global_state)
            first_round = 1
        (fed.run_dir / "config.json").write_text(json.dumps(cfg.as_dict(), indent=2))
        for server_round in range(first_round, cfg.num_server_rounds + 1):
            global_state = train_round(fed, server_round, global_state)
        finish(fed.run_dir, cfg, fed.recipe.backbone, global_state)
    except BaseException:
        fed.tracker.close(failed=True)
        raise
    fed.tracker.close()
    if all(r.get("skipped", True) for r in outputs.read_metrics(fed.run_dir) if r["round"] > 0):
        raise RunError(
            f"every round of {fed.run_dir} was skipped (fewer accepted replies than min-replies = {cfg.min_replies}; "
            "the rejection reasons are in metrics.jsonl): the global model was never updated"
        )
    return fed.run_dir


def set_up(grid: Grid, cfg: RunConfig) -> tuple[Federation, State]:
    """Resolve everything a run needs (:func:`prepare`), choose its folder and build its strategy;
    return the federation and the seeded initial global state."""
    recipe, global_state, server_eval = prepare(cfg)
    backbone = recipe.backbone
    left_out: dict[str, dict[str, str]] = {"train": {}, "evaluate": {}}
    secagg.check_config(cfg, recipe.method)  # secure aggregation: a method needing individual updates is refused
    strategy_class = secagg.SecAggStrategy if cfg.secure_aggregation else FedRAStrategy
    strategy = strategy_class(
        method=recipe.method,
        num_layers=backbone.num_layers,
        fingerprint=backbone.fingerprint,
        seed=cfg.seed,
        weighted=cfg.aggregation == "examples",
        min_replies=cfg.min_replies,
        # DP: no ratio check (it would let one node's update decide whether another's counts); clipping bounds the norm
        limits=ReplyLimits(cfg.max_update_norm, 0.0 if cfg.dp_settings() else cfg.max_update_norm_ratio, cfg.max_examples),
        sampling=cfg.client_sampling,
        clients_per_round=cfg.clients_per_round,
        on_reject=lambda kind, _round, node, reason: left_out[kind].__setitem__(str(node), reason),
        # a deployed node could claim another's test split; in simulation the operator runs every node
        share_eval_sets=not isinstance(grid, HttpGrid),
        privacy=cfg.dp_settings(),
        objective=backbone.family.objective,
    )
    strategy.summary()
    if cfg.secure_aggregation:
        strategy.min_holders = cfg.secagg_min_holders
    fed = Federation(grid, cfg, recipe, strategy, NodeDiscovery(cfg.query_timeout), server_eval,
                     _run_dir(cfg), left_out)
    return fed, global_state


def resume(fed: Federation, initial: State) -> tuple[State, int]:
    """Load the run folder's checkpoint (it must fit ``initial``'s keys and shapes, the backbone and
    the config); restore the method's state and the nodes' capacities; return (global state, the
    first round to run)."""
    saved = load_checkpoint(fed.checkpoint, expected=initial)
    if saved.info.get("fingerprint") != fed.recipe.backbone.fingerprint:
        raise ConfigError(f"resume: checkpoint {fed.checkpoint} was made with another backbone")
    if saved.info.get("config") != _resumable_config(fed.cfg):
        raise ConfigError(
            f"resume: checkpoint {fed.checkpoint} was made with another config; only num-server-rounds, "
            "round-timeout, query-timeout and tracking may change on resume"
        )
    fed.recipe.method.load_state_dict(saved.method_state)
    fed.discover.restored = dict(saved.info.get("capacities", {}))
    outputs.truncate_metrics(fed.run_dir, saved.round)
    fed.tracker = tracking.open_tracker(fed.cfg.tracking, fed.run_dir, saved.round + 1)
    log.info("resuming %s after round %d", fed.run_dir, saved.round)
    return saved.global_state, saved.round + 1


def start(fed: Federation, global_state: State) -> None:
    """Discover the nodes (none taking part: RunError, no folder made), make the run folder and
    evaluate the untuned model as round 0."""
    fed.discover(fed.grid, fed.strategy, 0)
    _require_nodes(fed.strategy, fed.discover)
    if fed.cfg.secure_aggregation:  # capacities that cannot keep secagg-min-holders are refused before any round
        secagg.check_nodes(fed.strategy, global_state, fed.cfg.seed)
    fed.run_dir.mkdir(parents=True)
    (fed.run_dir / "metrics.jsonl").write_text("")
    cfg = fed.cfg
    fed.tracker = tracking.open_tracker(cfg.tracking, fed.run_dir, 0)
    evaluation = evaluate_round(fed.grid, fed.strategy, fed.server_eval, 0, global_state, cfg.round_timeout, fed.left_out) if cfg.eval_every else {}
    _log_record(fed, {"round": 0, "seconds": 0.0, **evaluation})


def train_round(fed: Federation, server_round: int, global_state: State) -> State:
    """One round: discovery, allocation and training, validated aggregation, evaluation when due,
    the metrics line and the checkpoint; return the new global state."""
    cfg, strategy, grid = fed.cfg, fed.strategy, fed.grid
    begin = time.perf_counter()
    fed.discover(grid, strategy, server_round)
    _require_nodes(strategy, fed.discover)
    fed.left_out["train"].clear()
    if cfg.secure_aggregation:  # key exchange, masked training, unmasking (server_app/secure_aggregation.py)
        new_arrays, metrics = secure_train_round(grid, strategy, server_round, global_state, cfg)
    else:
        messages = list(strategy.configure_train(server_round, ArrayRecord(global_state), ConfigRecord(), grid))
        new_arrays, metrics = strategy.aggregate_train(server_round, send_and_receive(grid, messages, cfg.round_timeout))
    if new_arrays is not None:
        global_state = new_arrays.to_torch_state_dict()
    due = cfg.eval_every and (server_round % cfg.eval_every == 0 or server_round == cfg.num_server_rounds)
    evaluation = evaluate_round(grid, strategy, fed.server_eval, server_round, global_state, cfg.round_timeout, fed.left_out) if due else {}
    record = {
        "round": server_round,
        "seconds": round(time.perf_counter() - begin, 3),
        **evaluation,
        **outputs.train_record(metrics, strategy.nodes, fed.left_out["train"], fed.recipe.backbone.num_layers),
    }
    _log_record(fed, record)
    save_checkpoint(
        fed.checkpoint,
        ServerState(
            round=server_round,
            global_state=global_state,
            method_state=fed.recipe.method.state_dict(),
            info={
                "fingerprint": fed.recipe.backbone.fingerprint,
                "config": _resumable_config(cfg),
                "capacities": {str(n.node_id): n.capacity for n in strategy.nodes.values()},
            },
        ),
    )
    return global_state


def _run_dir(cfg: RunConfig) -> Path:
    """Return the run folder: ``output-dir/run-name``, which must not hold a run unless resuming;
    without a run-name ``<method>-<timestamp>``, with a suffix when that exists already."""
    root = Path(cfg.output_dir)
    if cfg.run_name:
        run_dir = root / cfg.run_name
        if not cfg.resume:
            check_new_run(run_dir, cfg.run_name)
        return run_dir
    base = f"{cfg.method}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir, n = root / base, 1
    while run_dir.exists():
        n += 1
        run_dir = root / f"{base}-{n}"
    return run_dir


def check_new_run(run_dir: Path, run_name: str) -> None:
    """Raise ConfigError when ``run_dir`` holds anything: an earlier run is never overwritten."""
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(
            f"config key 'run-name' = {run_name!r}: {run_dir} holds an earlier run; choose another run-name, "
            "or set resume=true to continue it"
        )


def _require_nodes(strategy: FedRAStrategy, discover: NodeDiscovery) -> None:
    """Raise RunError when no node takes part, naming why the nodes that answered were left out."""
    if strategy.nodes:
        return
    reasons = "; ".join(f"node {n}: {r}" for n, r in sorted(discover.reasons.items())[:3])
    raise RunError(
        "no node takes part: " + (reasons if reasons else "no SuperNode is connected")
        + (f" (and {len(discover.reasons) - 3} more)" if len(discover.reasons) > 3 else "")
    )


def evaluate_round(
    grid: Grid,
    strategy: FedRAStrategy,
    server_eval: ServerEvaluator | None,
    server_round: int,
    state: State,
    timeout: float,
    left_out: dict[str, dict[str, str]],
) -> dict:
    """Evaluate the global ``state``: on the nodes' own test splits through the strategy's
    configure_evaluate / aggregate_evaluate, and on the server's held-out set when there is one.
    Returns the record entries (``accuracy``, ``average``, ``loss``, ``examples``, ``eval-nodes``,
    ``eval-rejected``, ``eval-timings`` and ``server-accuracy`` / ``server-average``)."""
    left_out["evaluate"].clear()
    messages = list(strategy.configure_evaluate(server_round, ArrayRecord(state), ConfigRecord(), grid))
    replies = send_and_receive(grid, messages, timeout)
    metrics = strategy.aggregate_evaluate(server_round, replies)
    out = outputs.eval_record(metrics, left_out["evaluate"]) if metrics is not None else {}
    if server_eval is not None:
        accuracy = server_eval(state, strategy.model_blocks())
        out["server-accuracy"] = accuracy
        out["server-average"] = sum(accuracy.values()) / len(accuracy)
    return out


def _resumable_config(cfg: RunConfig) -> dict:
    """The config keys that must not change between a run and its resumption."""
    return cfg.as_dict(exclude=("resume", "num-server-rounds", "round-timeout", "query-timeout", "tracking"))


def _log_record(fed: Federation, record: dict) -> None:
    """Append the round's record to metrics.jsonl, hand it to the tracker and print its progress line."""
    record.update(privacy_report.epsilon_entry(fed.cfg, fed.run_dir, record))  # DP runs: epsilon so far
    outputs.append_metrics(fed.run_dir, record)
    fed.tracker.log_round(record)
    parts = [f"round {record['round']}/{fed.cfg.num_server_rounds}"]
    if record["round"]:
        sent = sum(record["bytes-sent"].values()) / 1e6
        recv = sum(record["bytes-received"].values()) / 1e6
        parts += [f"{record['seconds']:.1f} s", f"sent {sent:.2f} MB", f"received {recv:.2f} MB",
                  f"replies {len(record['accepted'])}/{len(record['node-ids'])}"]
        if record["train-loss"] is not None:
            parts.append(f"train loss {record['train-loss']:.3f}")
        if record["skipped"]:
            parts.append("SKIPPED (too few replies)")
    if "average" in record:
        parts.append(f"accuracy {100 * record['average']:.2f}%")
    if "server-average" in record:
        parts.append(f"server-side {100 * record['server-average']:.2f}%")
    if "epsilon" in record:
        parts.append(f"epsilon {record['epsilon']:.3g}")
    log.info(" | ".join(parts))


def finish(run_dir: Path, cfg: RunConfig, backbone: Backbone, global_state: State) -> None:
    """Write the final adapter, summary.md and plots, and print the per-domain table."""
    export_peft_adapter(global_state, backbone, cfg.lora(), run_dir / "adapter")
    records = outputs.read_metrics(run_dir)
    outputs.write_summary(run_dir, cfg.as_dict(), records)
    outputs.write_plots(run_dir, records, backbone.num_layers)
    log.info("per-domain top-1 accuracy (%%) of the global model:\n%s", outputs.per_domain_table([records[0], records[-1]]))
    perplexity = outputs.perplexity_table([records[0], records[-1]])
    if perplexity:
        log.info("per-domain perplexity of the global model (response tokens):\n%s", perplexity)
    log.info("outputs in %s", run_dir.resolve())
