"""The arithmetic of per-block secure aggregation (no protocol, no Flower): what both apps compute.

A round's participants are numbered 0..n-1 (their *index*). The server's allocation is public, so
every trainable key has a public holder set (the participants that return it). Keys with the same
holder set form a :class:`Segment`; each participant uploads one vector per segment it holds: its
weighted, quantised update of the segment's keys followed by its quantised weight (one element),
as integers modulo 2**32 (uint32), masked by

- a *self mask* expanded from the participant's own seed ``b`` (revealed for survivors), and
- a *pairwise mask* with every other holder of the segment, expanded from the seed the two agree
  on (added by the lower index, subtracted by the higher): it cancels in the segment's sum.

Masks are expanded with AES-256 in counter mode (the ``cryptography`` package) keyed by the seed,
the counter block naming the round and the segment. Flower's ``pseudo_rand_gen`` is not used: it
folds the seed to 32 bits and draws from a Mersenne Twister, and a masked vector whose values are
small leaks the mask's high bits, so the generator must be cryptographic.

Quantisation (Flower's ``quantize`` is not used either: it offsets by the clipping range, so zero
does not stay zero under a weight): a delta clipped to [-c, c] and multiplied by the participant's
weight ``w`` in [0, 1] becomes ``stochastic_round(w * delta / c * Q)``, the weight ``round(w * Q)``;
``Q = (2**31 - 1) // n`` (:func:`scale_for`), so that the sum over at most n participants of values
in [-Q, Q] stays within int32. The server divides each segment's sum by its weight sum and
multiplies by c: the holders' weighted mean delta, exact to about ``c / Q`` per element.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedra_core.wire import SecAgg

MODULUS_BITS = 32
INT32_MAX = 2**31 - 1


class SecAggError(ValueError):
    """A secure-aggregation input is inconsistent; the message says why in one line."""


@dataclass(frozen=True)
class Segment:
    """Keys that the same participants hold: ``keys`` (in global state order), their element counts
    ``sizes`` and the sorted participant indexes ``holders``. Its vector has ``length`` elements:
    the keys' flattened values, then the weight."""

    id: int
    keys: tuple[str, ...]
    sizes: tuple[int, ...]
    holders: tuple[int, ...]

    @property
    def length(self) -> int:
        """Elements of the segment's vector: every key's elements plus the weight."""
        return sum(self.sizes) + 1


def build_segments(held_keys: Sequence[Sequence[str]], sizes: Mapping[str, int], key_order: Sequence[str]) -> list[Segment]:
    """Group the keys that participants hold into segments of equal holder sets.

    ``held_keys[i]``: the keys participant i returns; ``sizes``: elements per key; ``key_order``: the
    global state's key order (a key nobody holds is in no segment). Segments are numbered in order
    of their first key.
    """
    held = [set(keys) for keys in held_keys]
    groups: dict[tuple[int, ...], list[str]] = {}
    for key in key_order:
        holders = tuple(i for i, keys in enumerate(held) if key in keys)
        if holders:
            groups.setdefault(holders, []).append(key)
    return [
        Segment(sid, tuple(keys), tuple(int(sizes[k]) for k in keys), holders)
        for sid, (holders, keys) in enumerate(groups.items())
    ]


def segments_of(segments: Sequence[Segment], index: int) -> list[Segment]:
    """Return the segments participant ``index`` holds, in id order."""
    return [s for s in segments if index in s.holders]


def thin_segments(segments: Sequence[Segment], min_holders: int, alive: Sequence[int] | None = None) -> list[Segment]:
    """Return the segments whose holders (among ``alive`` when given) number 1..min_holders-1: the
    ones whose sum would be the update of fewer than ``min_holders`` participants."""
    keep = None if alive is None else set(alive)
    out = []
    for s in segments:
        count = len(s.holders) if keep is None else sum(1 for h in s.holders if h in keep)
        if 0 < count < min_holders:
            out.append(s)
    return out


def scale_for(num_participants: int) -> int:
    """Return Q, the quantisation levels of the clipping range for a round of ``num_participants``
    maskers: the sum of that many values in [-Q, Q] fits in int32."""
    if num_participants < 1:
        raise SecAggError(f"{num_participants} participants: need at least 1")
    return INT32_MAX // num_participants


def threshold_for(fraction: float, num_participants: int) -> int:
    """Return the Shamir threshold of a round: ``ceil(fraction * n)``, at least 2, at most n."""
    if not 0 < fraction <= 1:
        raise SecAggError(f"threshold fraction {fraction}: must lie in (0, 1]")
    return min(num_participants, max(2, math.ceil(fraction * num_participants - 1e-9)))


def clip_update(delta: Mapping[str, np.ndarray], max_norm: float) -> dict[str, np.ndarray]:
    """Return ``delta`` scaled so that its L2 norm over every key is at most ``max_norm`` (0: as is).

    Stand-in for the node-side clip of ``fedra_core.privacy`` (per-block differential privacy);
    the node calls it through one function (:func:`client_app.secure_aggregation.clip`)."""
    if max_norm <= 0:
        return {k: np.asarray(v, dtype=np.float64) for k, v in delta.items()}
    norm = math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in delta.values()))
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {k: np.asarray(v, dtype=np.float64) * factor for k, v in delta.items()}


def encode_update(
    delta: Mapping[str, np.ndarray], weight: float, segments: Sequence[Segment], clip_range: float, scale: int,
    rng: np.random.Generator,
) -> dict[int, np.ndarray]:
    """Quantise one participant's update: per segment, ``stochastic_round(weight * clip(delta) / c * Q)``
    for every element of its keys, then ``round(weight * Q)``; uint32 vectors by segment id.

    ``delta`` must hold every key of ``segments`` with its size; ``weight`` lies in [0, 1].
    """
    if not 0 <= weight <= 1:
        raise SecAggError(f"weight {weight}: must lie in [0, 1]")
    if clip_range <= 0:
        raise SecAggError(f"clipping range {clip_range}: must be > 0")
    out: dict[int, np.ndarray] = {}
    for seg in segments:
        parts = []
        for key, size in zip(seg.keys, seg.sizes):
            if key not in delta:
                raise SecAggError(f"the update lacks key {key!r} of segment {seg.id}")
            value = np.asarray(delta[key], dtype=np.float64).ravel()
            if value.size != size:
                raise SecAggError(f"key {key!r} has {value.size} elements, segment {seg.id} expects {size}")
            parts.append(value)
        flat = np.clip(np.concatenate(parts) if parts else np.zeros(0), -clip_range, clip_range)
        real = flat * (weight * scale / clip_range)
        low = np.floor(real)
        ints = low + (rng.random(real.shape) < (real - low))
        ints = np.clip(ints, -scale, scale).astype(np.int64)
        vec = np.append(ints, int(round(weight * scale)))
        out[seg.id] = vec.astype(np.int64).astype(np.uint32)  # two's complement modulo 2**32
    return out


def expand_mask(seed: bytes, server_round: int, segment_id: int, length: int) -> np.ndarray:
    """Return ``length`` uniform uint32 values from AES-256-CTR keyed by ``seed`` (32 bytes), the
    counter starting at (round, segment): the same seed gives independent masks per round and segment."""
    if len(seed) != 32:
        raise SecAggError(f"a mask seed has {len(seed)} bytes, expected 32")
    nonce = struct.pack(">QII", server_round % 2**64, segment_id, 0)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(nonce)).encryptor()
    stream = encryptor.update(bytes(4 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u4").copy()


def pair_sign(own: int, other: int) -> int:
    """+1 when ``own`` adds the pairwise mask it shares with ``other`` (the lower index), else -1."""
    if own == other:
        raise SecAggError(f"participant {own} has no pairwise mask with itself")
    return 1 if own < other else -1


def mask_update(
    encoded: Mapping[int, np.ndarray], index: int, segments: Sequence[Segment], server_round: int, self_seed: bytes,
    pair_seeds: Mapping[int, bytes],
) -> dict[int, np.ndarray]:
    """Add participant ``index``'s masks to its ``encoded`` vectors (by segment id): its self mask
    and, for every other holder ``v`` of a segment that has a seed in ``pair_seeds`` (the
    participants that took part in the key exchange), +- the mask expanded from their seed."""
    out: dict[int, np.ndarray] = {}
    for seg in segments:
        if seg.id not in encoded:
            continue
        vec = encoded[seg.id].astype(np.uint32, copy=True)
        vec += expand_mask(self_seed, server_round, seg.id, seg.length)
        for other in seg.holders:
            if other == index or other not in pair_seeds:
                continue
            mask = expand_mask(pair_seeds[other], server_round, seg.id, seg.length)
            if pair_sign(index, other) > 0:
                vec += mask
            else:
                vec -= mask
        out[seg.id] = vec
    return out


def sum_uploads(uploads: Mapping[int, Mapping[int, np.ndarray]], segments: Sequence[Segment]) -> dict[int, np.ndarray]:
    """Return each segment's sum modulo 2**32 of the vectors its holders in ``uploads`` (index ->
    segment id -> vector) sent; a segment none of them holds is absent."""
    sums: dict[int, np.ndarray] = {}
    for seg in segments:
        acc = None
        for holder in seg.holders:
            if holder not in uploads:
                continue
            vec = uploads[holder].get(seg.id)
            if vec is None or vec.shape != (seg.length,) or vec.dtype != np.uint32:
                raise SecAggError(f"participant {holder}'s upload of segment {seg.id} is not {seg.length} uint32 values")
            acc = vec.copy() if acc is None else acc + vec
        if acc is not None:
            sums[seg.id] = acc
    return sums


def remove_masks(
    sums: Mapping[int, np.ndarray], segments: Sequence[Segment], server_round: int, self_seeds: Mapping[int, bytes],
    dropped_pair_seeds: Mapping[tuple[int, int], bytes],
) -> dict[int, np.ndarray]:
    """Return the sums without masks: every survivor's self mask (``self_seeds``: survivor -> seed)
    and, for a participant ``v`` that dropped after the key exchange, the mask each surviving holder
    ``u`` added for it (``dropped_pair_seeds[(u, v)]``). Raises SecAggError when a seed is missing."""
    out: dict[int, np.ndarray] = {}
    survivors = set(self_seeds)
    dropped = {v for _, v in dropped_pair_seeds}
    for seg in segments:
        if seg.id not in sums:
            continue
        vec = sums[seg.id].copy()
        for u in seg.holders:
            if u not in survivors:
                continue
            vec -= expand_mask(self_seeds[u], server_round, seg.id, seg.length)
            for v in seg.holders:
                if v not in dropped:
                    continue
                if (u, v) not in dropped_pair_seeds:
                    raise SecAggError(f"no seed of the pair ({u}, {v}) for segment {seg.id}")
                mask = expand_mask(dropped_pair_seeds[(u, v)], server_round, seg.id, seg.length)
                if pair_sign(u, v) > 0:
                    vec -= mask
                else:
                    vec += mask
        out[seg.id] = vec
    return out


def decode_sums(sums: Mapping[int, np.ndarray], segments: Sequence[Segment], clip_range: float, scale: int) -> dict[int, tuple[np.ndarray, float]]:
    """Return, by segment id, the holders' weighted sum of deltas (flat float64, in delta units) and
    their weight sum (in weight units, 1 per full-weight holder) from the unmasked segment sums: what
    per-block noise would be added to before :func:`means_by_key` divides."""
    out: dict[int, tuple[np.ndarray, float]] = {}
    for seg in segments:
        if seg.id in sums:
            signed = sums[seg.id].view(np.int32).astype(np.float64)
            out[seg.id] = (signed[:-1] * (clip_range / scale), float(signed[-1]) / scale)
    return out


def means_by_key(decoded: Mapping[int, tuple[np.ndarray, float]], segments: Sequence[Segment]) -> dict[str, np.ndarray]:
    """Return each key's weighted mean delta (flat float64): its segment's weighted sum over the
    weight sum. A segment whose weight sum is not positive gives nothing."""
    out: dict[str, np.ndarray] = {}
    for seg in segments:
        if seg.id not in decoded:
            continue
        total, weight = decoded[seg.id]
        if weight <= 0:
            continue
        start = 0
        for key, size in zip(seg.keys, seg.sizes):
            out[key] = total[start:start + size] / weight
            start += size
    return out


def table_to_config(segments: Sequence[Segment]) -> dict[str, list]:
    """Return the segment table as five flat lists (keys, sizes and holders, with per-segment counts)."""
    return {
        SecAgg.SEG_KEYS: [k for s in segments for k in s.keys],
        SecAgg.SEG_KEY_COUNTS: [len(s.keys) for s in segments],
        SecAgg.SEG_SIZES: [n for s in segments for n in s.sizes],
        SecAgg.SEG_HOLDERS: [h for s in segments for h in s.holders],
        SecAgg.SEG_HOLDER_COUNTS: [len(s.holders) for s in segments],
    }


def table_from_config(config: Mapping) -> list[Segment]:
    """Read the segment table written by :func:`table_to_config`; SecAggError when it is malformed."""
    try:
        keys, key_counts, sizes = list(config[SecAgg.SEG_KEYS]), list(config[SecAgg.SEG_KEY_COUNTS]), list(config[SecAgg.SEG_SIZES])
        holders, holder_counts = list(config[SecAgg.SEG_HOLDERS]), list(config[SecAgg.SEG_HOLDER_COUNTS])
    except (KeyError, TypeError):
        raise SecAggError("the segment table is missing or not lists") from None
    if (len(key_counts) != len(holder_counts) or sum(key_counts) != len(keys) or len(sizes) != len(keys)
            or sum(holder_counts) != len(holders) or any(c < 0 for c in key_counts + holder_counts)):
        raise SecAggError("the segment table's counts do not match its lists")
    segments, k, h = [], 0, 0
    for sid, (nk, nh) in enumerate(zip(key_counts, holder_counts)):
        seg_holders = tuple(int(x) for x in holders[h:h + nh])
        if list(seg_holders) != sorted(set(seg_holders)):
            raise SecAggError(f"segment {sid}'s holders are not distinct and sorted")
        segments.append(Segment(sid, tuple(str(x) for x in keys[k:k + nk]), tuple(int(x) for x in sizes[k:k + nk]), seg_holders))
        k, h = k + nk, h + nh
    return segments
