"""The FedRA strategy: per-node block allocation out, validated per-block aggregation in."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedra_core import MethodSettings, aggregate_fedra, allocate, client_keys
from fedra_core.data.partition import ClientShard, sample_round_clients
from fedra_core.inclusivefl import Momentum, block_momentum, momentum_distill
from fedra_core.state import State
from server_app.validation import RejectedReply, ReplyLimits, check_eval_reply, check_reply

log = logging.getLogger("fedra")


def record_nbytes(record: ArrayRecord) -> int:
    """Return the bytes of the serialised arrays of a record (what travels on the wire)."""
    return sum(len(array.data) for array in record.values())


def node_timings(metrics: Mapping[str, float], received: float) -> dict[str, float]:
    """Return a reply's phase times (its ``t-*`` metrics, seconds) and ``reply``: from the node's
    reply to the server's receipt of the round's replies (transfer and waiting for the others)."""
    times = {k[2:]: float(v) for k, v in metrics.items() if k.startswith("t-") and k != "t-end"}
    if "t-end" in metrics:
        times["reply"] = max(received - float(metrics["t-end"]), 0.0)
    return times


@dataclass(frozen=True)
class NodeInfo:
    """What the server knows of a node, from its capacity query: how many blocks it can hold, its
    domain, example counts, its test split's id (``eval_set``: shared by nodes holding the same
    split, empty when the node's own) and, in simulation, its partition (-1 for node-local data)."""

    node_id: int
    partition_id: int
    capacity: int
    domain: str = ""
    num_train: int = 0
    num_test: int = 0
    eval_set: str = ""

    @property
    def label(self) -> str:
        """The node's name in tables and plots: its domain and capacity."""
        return f"{self.domain or f'node {self.node_id}'} ({self.capacity} blocks)"


@dataclass
class RoundPlan:
    """What was sent this round: participating nodes (allocation row order), the allocation, the
    global state the round started from, the exact state each node received and the bytes of each
    message."""

    nodes: list[NodeInfo]
    allocation: np.ndarray
    global_state: State
    sent: dict[int, State] = field(default_factory=dict)
    messages: dict[int, Message] = field(default_factory=dict)
    bytes_sent: dict[int, int] = field(default_factory=dict)


@dataclass
class EvalOutcome:
    """What the federated evaluation of a round gave: per-domain pooled counts, the nodes asked,
    accepted and rejected (with reasons)."""

    correct: dict[str, int] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)
    loss_sum: dict[str, float] = field(default_factory=dict)
    asked: list[int] = field(default_factory=list)
    accepted: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    timings: dict[int, dict[str, float]] = field(default_factory=dict)

    def accuracy(self) -> dict[str, float]:
        """Top-1 accuracy per domain, the nodes of one domain pooled by examples."""
        return {d: self.correct[d] / self.examples[d] for d in self.examples}

    def average(self) -> float:
        """Example-weighted top-1 accuracy over every evaluated node."""
        return sum(self.correct.values()) / sum(self.examples.values())


@dataclass
class RoundOutcome:
    """What the aggregation of a round decided, for logs and metrics."""

    accepted: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    bytes_received: dict[int, int] = field(default_factory=dict)
    train_loss: float | None = None
    skipped: bool = False
    timings: dict[int, dict[str, float]] = field(default_factory=dict)


class FedRAStrategy(Strategy):
    """FedRA and its baselines as a Flower strategy.

    Each round it draws the allocation for the taking-part nodes, sends each node its sorted block
    indices with the LoRA of exactly those blocks plus the shared keys (keyed by global block
    index), validates the replies, and folds them back with :func:`fedra_core.aggregate_fedra`.
    """

    def __init__(
        self,
        method: MethodSettings,
        num_layers: int,
        fingerprint: str,
        seed: int = 0,
        weighted: bool = False,
        min_replies: int = 1,
        limits: ReplyLimits = ReplyLimits(),
        sampling: str = "all",
        clients_per_round: int = 0,
        distill_weight_fn=None,
    ) -> None:
        self.method = method
        self.num_layers = num_layers
        self.fingerprint = fingerprint
        self.seed = seed
        self.weighted = weighted
        self.min_replies = min_replies
        self.limits = limits
        self.sampling = sampling
        self.clients_per_round = clients_per_round
        self.distill_weight_fn = distill_weight_fn or (lambda server_round: 0.0)
        self.nodes: dict[int, NodeInfo] = {}
        self.momentum: Momentum = {}
        self.plan: RoundPlan | None = None
        self.outcome: RoundOutcome | None = None
        self.eval_outcome: EvalOutcome | None = None
        self._eval_messages: dict[int, Message] = {}

    # --- node registry --------------------------------------------------------------------------
    def register(self, info: NodeInfo) -> None:
        """Record (or update) a node's partition and capacity; an out-of-range capacity is refused."""
        if not 1 <= info.capacity <= self.num_layers:
            raise ValueError(f"node {info.node_id}: capacity-layers {info.capacity} is outside 1..{self.num_layers}")
        self.nodes[info.node_id] = info

    def round_rng(self, server_round: int) -> np.random.Generator:
        """Return the generator of one round: derived from (seed, round), so a resumed run draws the same."""
        return np.random.default_rng([self.seed, server_round])

    def ordered_nodes(self) -> list[NodeInfo]:
        """Return the registered nodes in a stable order: partition (simulation), domain, node id."""
        return sorted(self.nodes.values(), key=lambda n: (n.partition_id, n.domain, n.node_id))

    def participants(self, server_round: int) -> list[NodeInfo]:
        """Return this round's nodes in :meth:`ordered_nodes` order, after client sampling."""
        nodes = self.ordered_nodes()
        if self.sampling == "all" or not nodes:
            return nodes
        rng = np.random.default_rng([self.seed, server_round, 1])
        if self.sampling == "per-domain":  # one node per reported domain
            picked = sample_round_clients([ClientShard(n.domain, np.empty(0)) for n in nodes], rng, "per-domain")
            return [nodes[i] for i in picked]
        k = min(self.clients_per_round or len(nodes), len(nodes))
        chosen = sorted(rng.choice(len(nodes), size=k, replace=False).tolist())
        return [nodes[i] for i in chosen]

    # --- Strategy API ---------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Return one train message per participating node with its blocks and their LoRA state."""
        global_state = arrays.to_torch_state_dict()
        nodes = self.participants(server_round)
        allocation = allocate(self.method, [n.capacity for n in nodes], self.num_layers, self.round_rng(server_round))
        self.plan = RoundPlan(nodes=nodes, allocation=allocation, global_state=global_state)
        messages = []
        for node, row in zip(nodes, allocation):
            blocks = np.flatnonzero(row).tolist()
            sent = {k: global_state[k] for k in client_keys(global_state, blocks, self.method)}
            record = ArrayRecord(sent)
            cfg = ConfigRecord(
                {
                    **dict(config),
                    "server-round": server_round,
                    "blocks": blocks,
                    "fingerprint": self.fingerprint,
                    "method": self.method.name,
                    "seed": int(self.seed),
                    "distill-weight": float(self.distill_weight_fn(server_round)),
                }
            )
            self.plan.sent[node.node_id] = sent
            self.plan.bytes_sent[node.node_id] = record_nbytes(record)
            message = Message(RecordDict({"arrays": record, "config": cfg}), dst_node_id=node.node_id, message_type=MessageType.TRAIN)
            self.plan.messages[node.node_id] = message
            messages.append(message)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate the replies and aggregate the accepted ones; return (new arrays or None, metrics)."""
        assert self.plan is not None, "configure_train must run first"
        plan, outcome = self.plan, RoundOutcome()
        self.outcome = outcome
        row_of = {n.node_id: i for i, n in enumerate(plan.nodes)}
        # the grid stamps message ids when it sends; a SuperLink answers for a node that went away with
        # its own node id as sender, so replies are matched to nodes through the message they answer
        node_of = {m.metadata.message_id: nid for nid, m in plan.messages.items() if m.metadata.message_id}
        states: dict[int, State] = {}
        examples: dict[int, int] = {}
        losses: dict[int, float] = {}
        received = time.time()
        for reply in replies:
            node_id = node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if node_id not in row_of:
                log.warning("round %d: ignoring a reply from node %d, which was not asked", server_round, node_id)
                continue
            if not reply.has_error() and "arrays" in reply.content:
                outcome.bytes_received[node_id] = record_nbytes(reply.content["arrays"])
            try:
                state, metrics = check_reply(reply, plan.sent[node_id], self.limits)
            except RejectedReply as exc:
                outcome.rejected[node_id] = str(exc)
                log.warning("round %d: rejected reply of node %d: %s", server_round, node_id, exc)
                continue
            outcome.timings[node_id] = node_timings(metrics, received)
            states[node_id], examples[node_id] = state, int(metrics["num-examples"])
            losses[node_id] = float(metrics.get("train-loss", float("nan")))
            self._update_capacity(node_id, metrics)
        for node in plan.nodes:
            if node.node_id not in states and node.node_id not in outcome.rejected:
                outcome.rejected[node.node_id] = "no reply (node failed or timed out)"
                log.warning("round %d: node %d did not reply", server_round, node.node_id)
        outcome.accepted = [n.node_id for n in plan.nodes if n.node_id in states]
        if len(outcome.accepted) < self.min_replies:
            outcome.skipped = True
            log.warning(
                "round %d: %d accepted replies < min-replies %d; the global model stays as it was",
                server_round, len(outcome.accepted), self.min_replies,
            )
            return None, self._metrics(outcome)
        rows = [row_of[n] for n in outcome.accepted]
        allocation = plan.allocation[rows]
        client_states = [states[n] for n in outcome.accepted]
        global_state = plan.global_state
        if self.method.name == "inclusivefl":
            client_states = momentum_distill(global_state, client_states, allocation, self.momentum, self.method.inclusivefl_beta)
        weights = [examples[n] for n in outcome.accepted] if self.weighted else None
        new_state = aggregate_fedra(global_state, client_states, allocation, weights)
        if self.method.name == "inclusivefl":
            self.momentum = block_momentum(global_state, new_state)
        n_ex = np.array([examples[n] for n in outcome.accepted], dtype=float)
        outcome.train_loss = float(np.dot(n_ex, [losses[n] for n in outcome.accepted]) / n_ex.sum())
        return ArrayRecord(new_state), self._metrics(outcome)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Return one evaluate message with the full global state per distinct test split among the
        registered nodes that hold one (nodes sharing a split, as partitions of one domain in
        simulation, are asked once)."""
        chosen: dict[str, NodeInfo] = {}
        for node in self.ordered_nodes():
            if node.num_test > 0:
                chosen.setdefault(node.eval_set or f"node:{node.node_id}", node)
        cfg = ConfigRecord({**dict(config), "server-round": server_round, "fingerprint": self.fingerprint})
        self.eval_outcome = EvalOutcome(asked=[n.node_id for n in chosen.values()])
        self._eval_messages = {
            n.node_id: Message(RecordDict({"arrays": arrays, "config": cfg}), dst_node_id=n.node_id, message_type=MessageType.EVALUATE)
            for n in chosen.values()
        }
        return list(self._eval_messages.values())

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Validate the evaluation replies and pool them per domain by examples; return the per-domain
        accuracy (``accuracy/<domain>``), loss and examples and the example-weighted ``average``, or
        None when no reply was accepted."""
        assert self.eval_outcome is not None, "configure_evaluate must run first"
        outcome = self.eval_outcome
        node_of = {m.metadata.message_id: nid for nid, m in self._eval_messages.items() if m.metadata.message_id}
        received = time.time()
        for reply in replies:
            node_id = node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if node_id not in outcome.asked or node_id in outcome.accepted:
                log.warning("round %d: ignoring an evaluation reply from node %d, which was not asked", server_round, node_id)
                continue
            try:
                metrics = check_eval_reply(reply, self.limits)
            except RejectedReply as exc:
                outcome.rejected[node_id] = str(exc)
                log.warning("round %d: rejected evaluation reply of node %d: %s", server_round, node_id, exc)
                continue
            outcome.timings[node_id] = node_timings(metrics, received)
            domain = self.nodes[node_id].domain if node_id in self.nodes else f"node {node_id}"
            n = int(metrics["num-examples"])
            outcome.correct[domain] = outcome.correct.get(domain, 0) + int(metrics["correct"])
            outcome.examples[domain] = outcome.examples.get(domain, 0) + n
            outcome.loss_sum[domain] = outcome.loss_sum.get(domain, 0.0) + float(metrics["loss"]) * n
            outcome.accepted.append(node_id)
        for node_id in outcome.asked:
            if node_id not in outcome.accepted and node_id not in outcome.rejected:
                outcome.rejected[node_id] = "no evaluation reply (node failed or timed out)"
                log.warning("round %d: node %d did not answer the evaluation", server_round, node_id)
        if not outcome.accepted:
            return None
        record = {"average": outcome.average(), "examples": sum(outcome.examples.values())}
        for domain, acc in outcome.accuracy().items():
            record[f"accuracy/{domain}"] = acc
            record[f"loss/{domain}"] = outcome.loss_sum[domain] / outcome.examples[domain]
            record[f"examples/{domain}"] = outcome.examples[domain]
        return MetricRecord(record)

    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info(
            "FedRA strategy: method=%s, %d blocks, aggregation=%s, min-replies=%d, sampling=%s",
            self.method.name, self.num_layers, "examples" if self.weighted else "uniform", self.min_replies, self.sampling,
        )

    # --- helpers -------------------------------------------------------------------------------
    def _update_capacity(self, node_id: int, metrics: Mapping[str, float]) -> None:
        cap = metrics.get("capacity-layers")
        node = self.nodes.get(node_id)
        if node is None or cap is None or int(cap) == node.capacity:
            return
        try:
            self.register(replace(node, capacity=int(cap)))
            log.info("node %d now reports capacity %d (used from the next round)", node_id, int(cap))
        except ValueError as exc:
            log.warning("%s; keeping capacity %d", exc, node.capacity)

    def _metrics(self, outcome: RoundOutcome) -> MetricRecord:
        return MetricRecord(
            {
                "accepted": len(outcome.accepted),
                "rejected": len(outcome.rejected),
                "skipped": int(outcome.skipped),
                **({"train-loss": outcome.train_loss} if outcome.train_loss is not None else {}),
            }
        )
