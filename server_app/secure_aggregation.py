"""The server's side of per-block secure aggregation: one training round as four exchanges through
the Grid (Message API; no LegacyContext), on Flower's Shamir and key-agreement primitives.

1. ``query.secagg_setup``: each participant (index = its position in the round's participants)
   makes two key pairs and sends the public halves.
2. ``query.secagg_shares``: the public keys go to everyone who advertised; each node sends one
   encrypted share (of its self-mask seed and of its mask key) per other node. Nodes that answer
   are the round's *maskers*; the allocation is drawn over them only (and respects
   ``secagg-min-holders``).
3. ``train``: each masker gets its blocks as in a plain round, plus the shares addressed to it and
   the public segment table; it replies with its delta, quantised and masked, one vector per segment.
4. ``query.secagg_unmask``: the survivors (whose masked vector arrived and passed the checks) send
   their shares of the survivors' self seeds and of the dropped maskers' mask keys. With at least the
   threshold of replies the server rebuilds those secrets, removes the masks from each segment's
   sum and adds the holders' mean delta to the global state.

A round that cannot finish (too few maskers, survivors or unmasking replies; a thin block) fails
cleanly: one logged line, the global model stays as it was, the run goes on.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.serverapp import Grid

from fedra_core.wire import SecAgg as sw
from fedra_core import secure_sum as ss
from fedra_core import wire
from fedra_core.privacy import noise_generator, noisy_segment_sums
from fedra_core.run_config import RunConfig
from fedra_core.state import State, block_of_key
from server_app.exchange import match_replies, send_and_receive
from server_app.secagg_strategy import SecAggStrategy, ThinAllocation, round_segments
from server_app.shamir_batch import ShareError, combine_many
from server_app.strategy import NodeInfo, node_timings, record_nbytes
from server_app.validation import NO_REPLY, RejectedReply, check_error, number, phase_times, typed_record

log = logging.getLogger("fedra")
CURVE = ec.SECP256R1()
_MAX_KEY = 200           # bytes of an advertised public key
_MAX_CIPHERTEXT = 4096   # bytes of one encrypted share
_MAX_SHARE = 1024        # bytes of one Shamir share


class RoundFailed(RuntimeError):
    """Secure aggregation could not finish this round; the message says why in one line."""


@dataclass
class SecAggRound:
    """One round's protocol state on the server: participants by index, their public keys, the
    maskers, the encrypted shares by recipient, the segment table and stage timings and bytes."""

    server_round: int
    nodes: list[NodeInfo]
    threshold: int
    enc_keys: dict[int, bytes] = field(default_factory=dict)
    mask_keys: dict[int, bytes] = field(default_factory=dict)
    maskers: list[int] = field(default_factory=list)
    inbox: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)
    segments: list[ss.Segment] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    key_bytes: dict[str, int] = field(default_factory=lambda: {"sent": 0, "received": 0})

    def node_id(self, index: int) -> int:
        """The node id of participant ``index``."""
        return self.nodes[index].node_id


def config_nbytes(message: Message) -> int:
    """Bytes of a message's config records: key names, 8 per number, the length of each string or
    byte string (Flower's ``ConfigRecord.count_bytes`` fails on an empty list)."""
    def size(value) -> int:
        if isinstance(value, list):
            return sum(size(v) for v in value)
        return len(value) if isinstance(value, (bytes, str)) else 8

    return sum(len(k) + size(v) for record in message.content.config_records.values() for k, v in record.items())


def _exchange(grid: Grid, secagg: SecAggRound, messages: dict[int, Message], timeout: float, what: str,
              reject) -> dict[int, Message]:
    """Send ``messages`` (index -> message), return the error-free replies by index; a node that
    fails or does not answer is left out with a reason."""
    start = time.perf_counter()
    by_node = {secagg.node_id(i): m for i, m in messages.items()}
    index_of = {secagg.node_id(i): i for i in messages}
    secagg.key_bytes["sent"] += sum(config_nbytes(m) for m in messages.values())
    out: dict[int, Message] = {}
    replied: set[int] = set()
    for node_id, reply in match_replies(by_node, send_and_receive(grid, list(by_node.values()), timeout), what, secagg.server_round):
        replied.add(index_of[node_id])
        try:
            check_error(reply)
            typed_record(reply, sw.RECORD, ConfigRecord)
        except RejectedReply as exc:
            reject(node_id, f"{what}: {exc}")
            continue
        secagg.key_bytes["received"] += config_nbytes(reply)
        out[index_of[node_id]] = reply
    for index in messages:
        if index not in replied:
            reject(secagg.node_id(index), f"{what}: no reply (node failed or timed out)")
    secagg.seconds[what] = secagg.seconds.get(what, 0.0) + time.perf_counter() - start
    return out


def _query(secagg: SecAggRound, index: int, name: str, values: dict) -> Message:
    content = RecordDict({sw.RECORD: ConfigRecord({sw.ROUND: secagg.server_round, **values})})
    return Message(content, dst_node_id=secagg.node_id(index), message_type=f"{MessageType.QUERY}.{name}")


def _bytes_list(record: ConfigRecord, key: str, count: int, limit: int) -> list[bytes]:
    values = record[key] if key in record else None
    if not isinstance(values, list) or len(values) != count or not all(isinstance(v, bytes) and 0 < len(v) <= limit for v in values):
        raise RejectedReply(f"{key!r} is not {count} byte strings of at most {limit} bytes")
    return values


# --- the stages ----------------------------------------------------------------------------------
def advertise_keys(grid: Grid, secagg: SecAggRound, timeout: float, reject) -> None:
    """Stage 1: collect every participant's two public keys."""
    n = len(secagg.nodes)
    messages = {i: _query(secagg, i, sw.SETUP, {sw.INDEX: i, sw.NUM: n, sw.THRESHOLD: secagg.threshold}) for i in range(n)}
    for index, reply in _exchange(grid, secagg, messages, timeout, "secure-aggregation key setup", reject).items():
        record = reply.content[sw.RECORD]
        try:
            keys = [record.get(sw.ENC_KEY), record.get(sw.MASK_KEY)]
            if not all(isinstance(k, bytes) and 0 < len(k) <= _MAX_KEY for k in keys):
                raise RejectedReply("its public keys are not byte strings of at most 200 bytes")
            for key in keys:
                ec.EllipticCurvePublicKey.from_encoded_point(CURVE, key)
        except (RejectedReply, ValueError) as exc:
            reject(secagg.node_id(index), f"secure-aggregation key setup: {exc}")
            continue
        secagg.enc_keys[index], secagg.mask_keys[index] = keys
    if len(secagg.enc_keys) < secagg.threshold:
        raise RoundFailed(f"{len(secagg.enc_keys)} nodes advertised keys, fewer than the threshold {secagg.threshold}")


def exchange_shares(grid: Grid, secagg: SecAggRound, timeout: float, reject) -> None:
    """Stage 2: send the public keys out; keep each node's encrypted shares for their recipients.
    The nodes that sent one share to every other advertiser are the round's maskers."""
    indexes = sorted(secagg.enc_keys)
    table = {sw.INDEXES: indexes, sw.ENC_KEYS: [secagg.enc_keys[i] for i in indexes], sw.MASK_KEYS: [secagg.mask_keys[i] for i in indexes]}
    messages = {i: _query(secagg, i, sw.SHARES, table) for i in indexes}
    sent: dict[int, list[tuple[int, bytes]]] = {}
    for index, reply in _exchange(grid, secagg, messages, timeout, "secure-aggregation share exchange", reject).items():
        record = reply.content[sw.RECORD]
        others = [j for j in indexes if j != index]
        try:
            dst = record.get(sw.SHARE_DST)
            if not isinstance(dst, list) or sorted(int(j) for j in dst if isinstance(j, int)) != others:
                raise RejectedReply("its shares are not one for each other node")
            ciphertexts = _bytes_list(record, sw.CIPHERTEXTS, len(others), _MAX_CIPHERTEXT)
        except RejectedReply as exc:
            reject(secagg.node_id(index), f"secure-aggregation share exchange: {exc}")
            continue
        sent[index] = list(zip((int(j) for j in dst), ciphertexts))
    secagg.maskers = sorted(sent)
    if len(secagg.maskers) < secagg.threshold:
        raise RoundFailed(f"{len(secagg.maskers)} nodes sent their shares, fewer than the threshold {secagg.threshold}")
    for src in secagg.maskers:
        for dst, ciphertext in sent[src]:
            if dst in sent:
                secagg.inbox.setdefault(dst, []).append((src, ciphertext))


def secagg_train_record(secagg: SecAggRound, index: int, weight_ref: float) -> ConfigRecord:
    """The ``secagg`` record of masker ``index``'s train message: its index, the maskers, the
    shares addressed to it, the segment table, the quantisation scale and the weight reference."""
    inbox = sorted(secagg.inbox.get(index, []))
    return ConfigRecord({
        sw.ROUND: secagg.server_round, sw.INDEX: index, sw.MASKERS: secagg.maskers,
        sw.SHARE_SRC: [src for src, _ in inbox], sw.CIPHERTEXTS: [c for _, c in inbox],
        sw.SCALE: ss.scale_for(len(secagg.maskers)), sw.WEIGHT_REF: float(weight_ref),
        **ss.table_to_config(secagg.segments),
    })


def check_masked_reply(reply: Message, segments: Sequence[ss.Segment], limits) -> tuple[dict[int, np.ndarray], int, float, dict[str, float], int | None]:
    """Validate a masked train reply: one uint32 vector of the right length per segment the node
    holds (checked before decoding) and well-typed metrics. Returns (vectors by segment id, example
    count, loss, phase times, capacity); RejectedReply otherwise. Norms cannot be checked: the
    node clips its own update (client_app/secure_aggregation.py)."""
    check_error(reply)
    arrays = typed_record(reply, wire.ARRAYS, ArrayRecord)
    metrics = typed_record(reply, wire.METRICS, MetricRecord)
    expected = {str(s.id): s for s in segments}
    if set(arrays.keys()) != set(expected):
        raise RejectedReply(f"masked arrays {sorted(arrays.keys())[:4]} are not the node's segments {sorted(expected)[:4]}")
    vectors: dict[int, np.ndarray] = {}
    for key, seg in expected.items():
        array = arrays[key]
        if getattr(array, "dtype", None) != "uint32" or tuple(getattr(array, "shape", ())) != (seg.length,):
            raise RejectedReply(f"masked segment {key} is not {seg.length} uint32 values")
        if not isinstance(array.data, bytes) or len(array.data) > 4 * seg.length + 4096:
            raise RejectedReply(f"masked segment {key} holds more bytes than its shape takes (refused before decoding)")
        try:
            value = array.numpy()
        except Exception as exc:  # a malformed payload can fail anywhere in numpy's reader
            raise RejectedReply(f"masked segment {key} cannot be decoded ({exc.__class__.__name__})") from None
        if value.shape != (seg.length,) or value.dtype != np.uint32:
            raise RejectedReply(f"masked segment {key} does not hold what it announced")
        vectors[seg.id] = np.array(value, copy=True)
    examples = int(number(metrics, wire.NUM_EXAMPLES, integer=True, lo=1, hi=limits.max_examples))
    loss = float(number(metrics, wire.TRAIN_LOSS)) if wire.TRAIN_LOSS in metrics else float("nan")
    capacity = number(metrics, wire.CAPACITY, integer=True, required=False)
    return vectors, examples, loss, phase_times(metrics), capacity


def unmask_sums(grid: Grid, secagg: SecAggRound, uploads: Mapping[int, Mapping[int, np.ndarray]], timeout: float, reject) -> dict[int, np.ndarray]:
    """Stage 4: ask the survivors for their shares, rebuild the survivors' self seeds and the
    dropped maskers' mask keys from the first ``threshold`` valid replies and return each segment's
    unmasked sum. RoundFailed when fewer replies come."""
    survivors = sorted(uploads)
    dropped = [m for m in secagg.maskers if m not in uploads]
    messages = {i: _query(secagg, i, sw.UNMASK, {sw.SURVIVORS: survivors, sw.DROPPED: dropped}) for i in survivors}
    rows: dict[int, list[bytes]] = {}
    for index, reply in _exchange(grid, secagg, messages, timeout, "secure-aggregation unmasking", reject).items():
        record = reply.content[sw.RECORD]
        try:
            rows[index] = _bytes_list(record, sw.SELF_SHARES, len(survivors), _MAX_SHARE)
            if dropped:
                rows[index] += _bytes_list(record, sw.KEY_SHARES, len(dropped), _MAX_SHARE)
        except RejectedReply as exc:
            reject(secagg.node_id(index), f"secure-aggregation unmasking: {exc}")
    if len(rows) < secagg.threshold:
        raise RoundFailed(f"{len(rows)} survivors sent unmasking shares, fewer than the threshold {secagg.threshold}")
    start = time.perf_counter()
    responders = sorted(rows)[: secagg.threshold]
    try:
        secrets = combine_many([r + 1 for r in responders], [rows[r] for r in responders])
    except ShareError as exc:
        raise RoundFailed(f"the unmasking shares do not recombine ({exc})") from None
    self_seeds = dict(zip(survivors, secrets[: len(survivors)]))
    pair_seeds: dict[tuple[int, int], bytes] = {}
    for v, secret in zip(dropped, secrets[len(survivors):]):
        try:
            key = ec.derive_private_key(int.from_bytes(secret, "big"), CURVE)
        except ValueError:
            raise RoundFailed(f"the mask key of dropped node {secagg.node_id(v)} does not recombine") from None
        partners = {u for s in secagg.segments if v in s.holders for u in s.holders if u in uploads}
        for u in partners:
            public = ec.EllipticCurvePublicKey.from_encoded_point(CURVE, secagg.mask_keys[u])
            pair_seeds[(u, v)] = base64.urlsafe_b64decode(generate_shared_key(key, public))
    if any(len(seed) != 32 for seed in self_seeds.values()):
        raise RoundFailed("a self-mask seed does not recombine to 32 bytes")
    sums = ss.sum_uploads(uploads, secagg.segments)
    clean = ss.remove_masks(sums, secagg.segments, secagg.server_round, self_seeds, pair_seeds)
    secagg.seconds["secure-aggregation unmasking (server)"] = time.perf_counter() - start
    return clean


# --- one round ---------------------------------------------------------------------------------------
@dataclass
class _Uploads:
    """The train replies of a round: masked vectors by participant index and what each node claimed."""

    vectors: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)
    examples: dict[int, int] = field(default_factory=dict)
    losses: dict[int, float] = field(default_factory=dict)
    times: dict[int, dict[str, float]] = field(default_factory=dict)
    received_bytes: dict[int, int] = field(default_factory=dict)


def secure_train_round(grid: Grid, strategy: SecAggStrategy, server_round: int, global_state: State,
                       cfg: RunConfig) -> tuple[ArrayRecord | None, MetricRecord]:
    """Run one training round under secure aggregation; return (the new global arrays, or None when
    the round failed or had fewer than ``min-replies`` survivors, and the round's metrics, as
    :meth:`FedRAStrategy.aggregate_train` returns them)."""
    nodes = strategy.participants(server_round)
    secagg = SecAggRound(server_round, nodes, ss.threshold_for(cfg.secagg_threshold, max(len(nodes), 2)))
    rejected: list[int] = []

    def reject(node_id: int, reason: str) -> None:
        if node_id not in rejected:
            rejected.append(node_id)
        strategy._reject("train", server_round, node_id, reason)

    uploads, allocation, sent_bytes = _Uploads(), np.zeros((len(nodes), strategy.num_layers), dtype=bool), {}
    new_state: State | None = None
    try:
        if len(nodes) < max(2, cfg.secagg_min_holders):
            raise RoundFailed(f"{len(nodes)} node(s) take part; secure aggregation needs at least {max(2, cfg.secagg_min_holders)}")
        advertise_keys(grid, secagg, cfg.query_timeout, reject)
        exchange_shares(grid, secagg, cfg.query_timeout, reject)
        messages = _train_messages(grid, strategy, secagg, server_round, global_state, allocation)
        sent_bytes = {nid: sum(record_nbytes(m.content[k]) for k in (wire.ARRAYS, wire.CONTEXT) if k in m.content) for nid, m in messages.items()}
        _collect(grid, strategy, secagg, messages, cfg, uploads, reject)
        if len(uploads.vectors) < max(secagg.threshold, strategy.min_replies):
            raise RoundFailed(f"{len(uploads.vectors)} masked updates arrived, fewer than the threshold {secagg.threshold} "
                              f"or min-replies {strategy.min_replies}")
        thin = ss.thin_segments(secagg.segments, cfg.secagg_min_holders, alive=list(uploads.vectors))
        if thin:
            raise RoundFailed(f"with the dropouts a block would be summed over fewer than secagg-min-holders {cfg.secagg_min_holders} nodes")
        clean = unmask_sums(grid, secagg, uploads.vectors, cfg.query_timeout, reject)
        new_state = apply_means(strategy, global_state, secagg, clean, cfg)
    except RoundFailed as exc:
        log.warning("round %d: secure aggregation failed: %s; the global model stays as it was", server_round, exc)
    survivors = [i for i in range(len(nodes)) if i in uploads.vectors]
    log.info("round %d: secure aggregation over %d maskers, %d survivors; key material %.1f kB out, %.1f kB in", server_round,
             len(secagg.maskers), len(survivors), secagg.key_bytes["sent"] / 1e3, secagg.key_bytes["received"] / 1e3)
    for node in nodes:
        if node.node_id not in rejected and nodes.index(node) not in uploads.vectors:
            reject(node.node_id, "left out of the secure-aggregation round")
    record: dict = {
        "accepted": len(survivors),
        "rejected": len(rejected),
        "skipped": int(new_state is None),
        "node-ids": [n.node_id for n in nodes],
        "partitions": [n.partition_id for n in nodes],
        "capacities": [n.capacity for n in nodes],
        "allocation": allocation.astype(int).ravel().tolist(),
        "bytes-sent": [sent_bytes.get(n.node_id, 0) for n in nodes],
        "bytes-received": [uploads.received_bytes.get(i, 0) for i in range(len(nodes))],
        "accepted-ids": [nodes[i].node_id for i in survivors],
        "rejected-ids": rejected,
        **{f"time/{nodes[i].node_id}/{phase}": t for i, phases in uploads.times.items() for phase, t in phases.items()},
        **{f"time/server/{stage}": t for stage, t in secagg.seconds.items()},
    }
    if new_state is None:
        return None, MetricRecord(record)
    n_ex = np.array([uploads.examples[i] for i in survivors], dtype=float)
    record["train-loss"] = float(np.dot(n_ex, [uploads.losses[i] for i in survivors]) / n_ex.sum())
    return ArrayRecord(new_state), MetricRecord(record)


def _train_messages(grid: Grid, strategy: SecAggStrategy, secagg: SecAggRound, server_round: int, global_state: State,
                    allocation: np.ndarray) -> dict[int, Message]:
    """Stage 3's messages: the strategy's train messages for the maskers (allocation drawn over
    them), each with its ``secagg`` record; fills ``allocation`` (rows: the round's participants)
    and the round's segment table."""
    strategy.only = {secagg.node_id(i) for i in secagg.maskers}
    try:
        strategy.configure_train(server_round, ArrayRecord(global_state), ConfigRecord(), grid)
    except ThinAllocation as exc:
        raise RoundFailed(str(exc)) from None
    finally:
        strategy.only = None
    current = strategy._round
    index_of = {n.node_id: i for i, n in enumerate(secagg.nodes)}
    rows = [index_of[n.node_id] for n in current.nodes]
    allocation[rows] = current.allocation
    secagg.segments = round_segments(strategy.method, global_state, current.allocation, rows)
    weight_ref = max([1] + [n.num_train for n in current.nodes])
    for node_id, message in current.messages.items():
        message.content[wire.SECAGG] = secagg_train_record(secagg, index_of[node_id], weight_ref)
    return dict(current.messages)


def _collect(grid: Grid, strategy: SecAggStrategy, secagg: SecAggRound, messages: dict[int, Message], cfg: RunConfig,
             uploads: _Uploads, reject) -> None:
    """Send the train messages; keep each valid masked reply in ``uploads``."""
    index_of = {n.node_id: i for i, n in enumerate(secagg.nodes)}
    replies = send_and_receive(grid, list(messages.values()), cfg.round_timeout)
    received = time.time()
    answered: set[int] = set()
    for node_id, reply in match_replies(messages, replies, "training reply", secagg.server_round):
        answered.add(node_id)
        index = index_of[node_id]
        if not reply.has_error() and isinstance(reply.content.array_records.get(wire.ARRAYS), ArrayRecord):
            uploads.received_bytes[index] = record_nbytes(reply.content[wire.ARRAYS])
        try:
            vectors, examples, loss, times, capacity = check_masked_reply(reply, ss.segments_of(secagg.segments, index), strategy.limits)
        except RejectedReply as exc:
            reject(node_id, str(exc))
            continue
        uploads.vectors[index], uploads.examples[index], uploads.losses[index] = vectors, examples, loss
        uploads.times[index] = node_timings(times, received)
        strategy._update_capacity(node_id, capacity)
    for node_id in messages:
        if node_id not in answered:
            reject(node_id, NO_REPLY)


def apply_means(strategy: SecAggStrategy, global_state: State, secagg: SecAggRound, sums: Mapping[int, np.ndarray], cfg: RunConfig) -> State:
    """Add each key's unmasked mean delta to the global state, through the method's aggregation as
    the one client holding every block that has a surviving holder (a holder-mean method's step is
    exactly that client's state there, the previous value elsewhere)."""
    decoded = ss.decode_sums(sums, secagg.segments, cfg.secagg_clip_range, ss.scale_for(len(secagg.maskers)))
    if strategy.privacy:  # DP: each holder group's sum is noised before the division by its holder count
        decoded = noisy_segment_sums(decoded, strategy.privacy.noise_std, noise_generator(strategy.seed, secagg.server_round))
    means = ss.means_by_key(decoded, secagg.segments)
    virtual = {}
    for key, mean in means.items():
        old = global_state[key]
        virtual[key] = (old.double() + torch.from_numpy(mean.reshape(tuple(old.shape)))).to(old.dtype)
    row = np.zeros((1, strategy.num_layers), dtype=bool)
    for key in virtual:
        block = block_of_key(key)
        if block is not None:
            row[0, block] = True
    return strategy.method.aggregate(global_state, [virtual], row, None)
