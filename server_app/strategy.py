"""The FedRA strategy: per-node block allocation out, validated per-block aggregation in."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedra_core import wire
from fedra_core.data.partition import sample_round_clients
from fedra_core.methods import Method
from fedra_core.objectives import CLASSIFICATION, Objective
from fedra_core.privacy import DPSettings, clip_excess, noise_generator, noisy_holder_mean
from fedra_core.state import State
from server_app.exchange import match_replies
from server_app.validation import (
    NO_REPLY, RejectedReply, ReplyLimits, TrainClaim, check_eval_reply, check_reply, norm_outliers,
)

log = logging.getLogger("fedra")

# (kind "train" | "evaluate", server round, node id, one-line reason) for every reply left out
RejectHook = Callable[[str, int, int, str], None]


def record_nbytes(record: ArrayRecord) -> int:
    """Return the bytes of the serialised arrays of a record (what travels on the wire)."""
    return sum(len(array.data) for array in record.values())


def _sent_nbytes(message: Message) -> int:
    """Tensor bytes of a training message: the client's own state plus any read-only context."""
    return sum(record_nbytes(message.content[name]) for name in (wire.ARRAYS, wire.CONTEXT) if name in message.content)


def node_timings(times: Mapping[str, float], received: float) -> dict[str, float]:
    """Return a reply's phase times (its validated ``t-*`` metrics without the prefix, seconds) and
    ``reply``: from the node's reply (``end``, its clock) to the server's receipt of the round's
    replies (transfer and waiting for the others)."""
    out = {k: float(v) for k, v in times.items() if k != "end"}
    if "end" in times:
        out["reply"] = max(received - float(times["end"]), 0.0)
    return out


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
class _Round:
    """What was sent in the round in flight: participating nodes (allocation row order), the
    allocation, the global state it started from, the state each node received, the messages."""

    nodes: list[NodeInfo]
    allocation: np.ndarray
    global_state: State
    sent: dict[int, State] = field(default_factory=dict)
    messages: dict[int, Message] = field(default_factory=dict)


def _timing_entries(timings: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
    return {f"time/{node}/{phase}": float(t) for node, phases in timings.items() for phase, t in phases.items()}


class FedRAStrategy(Strategy):
    """FedRA and its baselines as a Flower strategy.

    Each round it draws the method's allocation for the taking-part nodes, sends each node its
    sorted block indices with the trainable state of exactly those blocks plus the shared keys
    (keyed by global block index), validates the replies and lets the method fold the accepted ones
    back (FedRA: the per-block mean over the nodes that held each block). Federated evaluation sends
    the full global state to one node per distinct test split and pools the replies per domain.

    Parameters
    ----------
    method : Method
        The federated method (:func:`fedra_core.methods.get_method`): allocation, keys per node,
        values sent each round, aggregation and its own server state.
    num_layers : int
        Number of blocks L of the backbone; node capacities must lie in 1..L.
    fingerprint : str
        Fingerprint of the frozen backbone; sent with every message so that a node with other
        weights refuses to train.
    seed : int (default: 0)
        Seed of the run; each round's allocation and client sampling derive from (seed, round), so
        a resumed run draws the same.
    weighted : bool (default: False)
        Weight each node's update by its example count (False: uniform, as FedRA).
    min_replies : int (default: 1)
        Fewest accepted training replies for the round to change the global model.
    limits : ReplyLimits (default: ReplyLimits())
        Bounds every reply must respect (update norm, example count).
    sampling : str (default: "all")
        Which registered nodes train each round: ``all``, ``per-domain`` (one per reported domain)
        or ``uniform`` (``clients_per_round`` of them).
    clients_per_round : int (default: 0)
        Nodes per round for ``uniform`` sampling (0: all).
    on_reject : RejectHook | None (default: None)
        Called with (kind, round, node id, reason) for every reply left out, besides the log line.
    share_eval_sets : bool (default: False)
        Ask one node per reported ``eval-set`` (partitions of one domain in simulation hold the same
        test split). Off in deployment: a node could claim another node's split and keep it from
        being evaluated, so every node evaluates its own.
    privacy : DPSettings | None (default: None)
        Per-block client-level DP (:mod:`fedra_core.privacy`): each training message carries
        ``dp-clip-norm``, a reply whose update norm exceeds it is rejected, and the accepted ones
        are folded by :func:`~fedra_core.privacy.noisy_holder_mean` instead of the method's
        aggregation (only methods whose step is the holders' per-block mean; the run config checks).
    objective : Objective (default: CLASSIFICATION)
        What the backbone's family is scored on (:mod:`fedra_core.objectives`): its derived figures
        (a causal LM's ``perplexity``) are written per domain besides accuracy and loss.
    """

    def __init__(
        self,
        method: Method,
        num_layers: int,
        fingerprint: str,
        seed: int = 0,
        weighted: bool = False,
        min_replies: int = 1,
        limits: ReplyLimits = ReplyLimits(),
        sampling: str = "all",
        clients_per_round: int = 0,
        on_reject: RejectHook | None = None,
        share_eval_sets: bool = False,
        privacy: DPSettings | None = None,
        objective: Objective = CLASSIFICATION,
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
        self.on_reject = on_reject
        self.share_eval_sets = share_eval_sets
        self.privacy = privacy
        self.objective = objective
        self.nodes: dict[int, NodeInfo] = {}
        self._round: _Round | None = None
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

    def model_blocks(self) -> list[int]:
        """Return the blocks of the global model as the method evaluates it, for the registered nodes."""
        return self.method.model_blocks(self.num_layers, [n.capacity for n in self.nodes.values()])

    def participants(self, server_round: int) -> list[NodeInfo]:
        """Return this round's nodes in :meth:`ordered_nodes` order, after client sampling."""
        nodes = self.ordered_nodes()
        if self.sampling == "all" or not nodes:
            return nodes
        rng = np.random.default_rng([self.seed, server_round, 1])
        count = min(self.clients_per_round or len(nodes), len(nodes)) if self.sampling == "uniform" else None
        picked = sample_round_clients([n.domain for n in nodes], rng, self.sampling, count)
        return [nodes[i] for i in picked]

    def allocate(self, nodes: list[NodeInfo], server_round: int, global_state: State) -> np.ndarray:
        """Return this round's bool allocation (``nodes`` x blocks): the method's draw (secure
        aggregation's strategy constrains it)."""
        return self.method.allocate([n.capacity for n in nodes], self.num_layers, self.round_rng(server_round))

    # --- Strategy API ---------------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Return one train message per participating node with its blocks and their trainable state."""
        global_state = arrays.to_torch_state_dict()
        nodes = self.participants(server_round)
        allocation = self.allocate(nodes, server_round, global_state)
        self._round = current = _Round(nodes=nodes, allocation=allocation, global_state=global_state)
        extra = self.method.round_config(server_round)
        for node, row in zip(nodes, allocation):
            blocks = np.flatnonzero(row).tolist()
            sent = {k: global_state[k] for k in self.method.client_keys(global_state, blocks)}
            content = RecordDict({wire.ARRAYS: ArrayRecord(sent)})
            context = self.method.context_keys(global_state, blocks)
            if context:  # read-only state the client needs besides its own (not sent back)
                content[wire.CONTEXT] = ArrayRecord({k: global_state[k] for k in context})
            cfg = ConfigRecord(
                {
                    **dict(config),
                    wire.SERVER_ROUND: server_round,
                    wire.BLOCKS: blocks,
                    wire.FINGERPRINT: self.fingerprint,
                    wire.METHOD: self.method.name,
                    wire.SEED: int(self.seed),
                    **extra,
                    **({wire.DP_CLIP_NORM: self.privacy.clip_norm} if self.privacy else {}),  # DP: the node clips
                }
            )
            current.sent[node.node_id] = sent
            content[wire.CONFIG] = cfg
            current.messages[node.node_id] = Message(content, dst_node_id=node.node_id, message_type=MessageType.TRAIN)
        return list(current.messages.values())

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate the replies and let the method aggregate the accepted ones.

        Returns (the new global arrays, or None when fewer than ``min_replies`` were accepted, and
        the round's metrics): counts ``accepted``, ``rejected``, ``skipped``, ``train-loss`` (mean
        over the accepted nodes, weighted by examples), the per-node lists aligned with
        ``node-ids`` (``partitions``, ``capacities``, ``bytes-sent``, ``bytes-received``), the
        ``allocation`` flattened row by row, ``accepted-ids``, ``rejected-ids`` and each node's
        phase times as ``time/<node>/<phase>``.
        """
        assert self._round is not None, "configure_train must run first"
        current = self._round
        row_of = {n.node_id: i for i, n in enumerate(current.nodes)}
        states: dict[int, State] = {}
        claims: dict[int, TrainClaim] = {}
        received_bytes: dict[int, int] = {}
        rejected: list[int] = []
        received = time.time()
        for node_id, reply in match_replies(current.messages, replies, "training reply", server_round):
            if not reply.has_error() and wire.ARRAYS in reply.content and isinstance(reply.content[wire.ARRAYS], ArrayRecord):
                received_bytes[node_id] = record_nbytes(reply.content[wire.ARRAYS])
            try:
                state, claim = check_reply(reply, current.sent[node_id], self.limits)
                unclipped = self.privacy and clip_excess(claim.update_norm, self.privacy.clip_norm, current.sent[node_id])
                if unclipped:  # DP: the node must have clipped its update
                    raise RejectedReply(unclipped)
                states[node_id], claims[node_id] = state, claim
            except RejectedReply as exc:
                rejected.append(node_id)
                self._reject("train", server_round, node_id, str(exc))
        outliers = norm_outliers({n: c.group_norms for n, c in claims.items()}, self.limits.max_update_norm_ratio)
        for node_id, reason in outliers.items():
            del states[node_id], claims[node_id]
            rejected.append(node_id)
            self._reject("train", server_round, node_id, reason)
        for node_id, claim in claims.items():
            self._update_capacity(node_id, claim.capacity)
        timings = {n: node_timings(c.times, received) for n, c in claims.items()}
        for node in current.nodes:
            if node.node_id not in states and node.node_id not in rejected:
                rejected.append(node.node_id)
                self._reject("train", server_round, node.node_id, NO_REPLY)
        accepted = [n.node_id for n in current.nodes if n.node_id in states]
        record: dict = {
            "accepted": len(accepted),
            "rejected": len(rejected),
            "skipped": int(len(accepted) < self.min_replies),
            "node-ids": [n.node_id for n in current.nodes],
            "partitions": [n.partition_id for n in current.nodes],
            "capacities": [n.capacity for n in current.nodes],
            "allocation": current.allocation.astype(int).ravel().tolist(),
            "bytes-sent": [_sent_nbytes(m) for m in current.messages.values()],
            "bytes-received": [received_bytes.get(n.node_id, 0) for n in current.nodes],
            "accepted-ids": accepted,
            "rejected-ids": rejected,
            **_timing_entries(timings),
        }
        if len(accepted) < self.min_replies:
            log.warning(
                "round %d: %d accepted replies < min-replies %d; the global model stays as it was",
                server_round, len(accepted), self.min_replies,
            )
            return None, MetricRecord(record)
        allocation = current.allocation[[row_of[n] for n in accepted]]
        weights = [claims[n].num_examples for n in accepted] if self.weighted else None
        if self.privacy:  # DP: each block's sum over its holders, noised, over the holder count
            new_state = noisy_holder_mean(current.global_state, [states[n] for n in accepted], allocation,
                                          self.privacy.noise_std, noise_generator(self.seed, server_round))
        else:
            new_state = self.method.aggregate(current.global_state, [states[n] for n in accepted], allocation, weights)
        n_ex = np.array([claims[n].num_examples for n in accepted], dtype=float)
        record["train-loss"] = float(np.dot(n_ex, [claims[n].loss for n in accepted]) / n_ex.sum())
        return ArrayRecord(new_state), MetricRecord(record)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Return one evaluate message with the full global state per distinct test split among the
        registered nodes that hold one (nodes sharing a split, as partitions of one domain in
        simulation, are asked once)."""
        chosen: dict[str, NodeInfo] = {}
        for node in self.ordered_nodes():
            if node.num_test > 0:
                shared = self.share_eval_sets and node.eval_set
                chosen.setdefault(node.eval_set if shared else f"node:{node.node_id}", node)
        blocks = self.model_blocks()
        cfg = ConfigRecord({**dict(config), wire.SERVER_ROUND: server_round, wire.FINGERPRINT: self.fingerprint, wire.BLOCKS: blocks})
        self._eval_messages = {
            n.node_id: Message(RecordDict({wire.ARRAYS: arrays, wire.CONFIG: cfg}), dst_node_id=n.node_id, message_type=MessageType.EVALUATE)
            for n in chosen.values()
        }
        return list(self._eval_messages.values())

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Validate the evaluation replies and pool them per domain by scored predictions (the examples;
        a causal LM's response tokens).

        Returns the per-domain ``accuracy/<domain>``, ``loss/<domain>``, ``examples/<domain>``,
        ``targets/<domain>`` and the objective's derived figures (``perplexity/<domain>``), the
        target-weighted ``average`` and total ``examples``, ``eval-ids`` (accepted nodes),
        ``eval-rejected-ids`` and each node's phase times as ``time/<node>/<phase>``; None when no
        node was asked.
        """
        asked = list(self._eval_messages)
        correct: dict[str, int] = {}
        examples: dict[str, int] = {}
        targets: dict[str, int] = {}
        loss_sum: dict[str, float] = {}
        accepted: list[int] = []
        rejected: list[int] = []
        timings: dict[int, dict[str, float]] = {}
        received = time.time()
        for node_id, reply in match_replies(self._eval_messages, replies, "evaluation reply", server_round):
            node = self.nodes.get(node_id)
            try:
                claim = check_eval_reply(reply, self.limits, node.num_test if node is not None else None)
            except RejectedReply as exc:
                rejected.append(node_id)
                self._reject("evaluate", server_round, node_id, str(exc))
                continue
            timings[node_id] = node_timings(claim.times, received)
            domain = node.domain if node is not None else f"node {node_id}"
            t = claim.targets or claim.num_examples
            correct[domain] = correct.get(domain, 0) + claim.correct
            examples[domain] = examples.get(domain, 0) + claim.num_examples
            targets[domain] = targets.get(domain, 0) + t
            loss_sum[domain] = loss_sum.get(domain, 0.0) + claim.loss * t
            accepted.append(node_id)
        for node_id in asked:
            if node_id not in accepted and node_id not in rejected:
                rejected.append(node_id)
                self._reject("evaluate", server_round, node_id, "no evaluation reply (node failed or timed out)")
        if not asked:
            return None
        record: dict = {"eval-ids": accepted, "eval-rejected-ids": rejected, **_timing_entries(timings)}
        if accepted:
            record.update({"average": sum(correct.values()) / sum(targets.values()), "examples": sum(examples.values())})
        for domain in examples:
            record[f"accuracy/{domain}"] = correct[domain] / targets[domain]
            record[f"loss/{domain}"] = loss_sum[domain] / targets[domain]
            record[f"examples/{domain}"] = examples[domain]
            if self.objective.derived:
                record[f"targets/{domain}"] = targets[domain]
                for name, value in self.objective.derived_figures(loss_sum[domain] / targets[domain]).items():
                    record[f"{name}/{domain}"] = value
        return MetricRecord(record)

    def summary(self) -> None:
        """Log the strategy's settings."""
        log.info(
            "FedRA strategy: method=%s, %d blocks, aggregation=%s, min-replies=%d, sampling=%s",
            self.method.name, self.num_layers, "examples" if self.weighted else "uniform", self.min_replies, self.sampling,
        )

    def start(self, *args, **kwargs):  # noqa: D102
        raise NotImplementedError("the FedRA ServerApp runs its own round loop (server_app.app.run_federation)")

    # --- helpers -------------------------------------------------------------------------------
    def _reject(self, kind: str, server_round: int, node_id: int, reason: str) -> None:
        what = "training reply" if kind == "train" else "evaluation reply"
        log.warning("round %d: %s of node %d left out: %s", server_round, what, node_id, reason)
        if self.on_reject is not None:
            self.on_reject(kind, server_round, node_id, reason)

    def _update_capacity(self, node_id: int, cap: int | None) -> None:
        node = self.nodes.get(node_id)
        if node is None or cap is None or cap == node.capacity:
            return
        try:
            self.register(replace(node, capacity=cap))
            log.info("node %d now reports capacity %d (used from the next round)", node_id, cap)
        except ValueError as exc:
            log.warning("%s; keeping capacity %d", exc, node.capacity)
