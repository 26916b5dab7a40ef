"""Checks on every client reply before any of it is used: a node is not trusted with what it sends back.

Every field a reply may carry is type-checked here (a number is a real int or float, finite and in
range; a string is short and printable), the arrays' metadata are checked against what was sent
before a byte is decoded, and a training update's norm is bounded. Whatever fails raises
RejectedReply with one line; the strategy logs it and the round goes on without the reply.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.constant import ErrorCode

from fedra_core import wire
from fedra_core.state import State, block_of_key

NO_REPLY = "no reply (node failed or timed out)"
# bytes an .npy header may add to an Array's payload (numpy pads it to 64 bytes; a long shape needs more)
_NPY_HEADER_MAX = 4096
_MAX_TEXT = 200  # longest domain, device, eval-set or fingerprint a node may report
MAX_TARGETS_PER_EXAMPLE = 1 << 20  # most scored predictions (tokens) one evaluation example may claim
SHARED = "shared"  # the norm group of the keys outside the blocks (head, final norm, embedding adapters)


class RejectedReply(Exception):
    """A reply failed validation; the message says why in one line."""


@dataclass(frozen=True)
class ReplyLimits:
    """Bounds a reply must respect: the absolute L2 norm of its update (0: unbounded), the ratio of
    its norm to the median of the other replies' norms of the round, per block (0: off; see
    :func:`norm_outliers`), and the example count."""

    max_update_norm: float = 0.0
    max_update_norm_ratio: float = 10.0
    max_examples: int = 10_000_000


@dataclass(frozen=True)
class TrainClaim:
    """What a validated training reply says besides its state: example count, mean loss, the
    capacity it reports now (None when absent), its phase times (``t-*`` seconds; ``end`` is the
    node's clock when it replied) and the update's L2 norm, in total and per norm group (block index
    or :data:`SHARED`)."""

    num_examples: int
    loss: float
    capacity: int | None
    times: dict[str, float]
    update_norm: float
    group_norms: dict[int | str, float]


@dataclass(frozen=True)
class EvalClaim:
    """A validated evaluation reply: accuracy, mean loss, example and correct counts, phase times and
    the scored predictions behind accuracy and loss (``targets``: the examples, or a causal LM's
    response tokens)."""

    accuracy: float
    loss: float
    num_examples: int
    correct: int
    times: dict[str, float]
    targets: int = 0


@dataclass(frozen=True)
class QueryClaim:
    """A validated capacity-query reply: what the node says it holds and can do."""

    capacity: int
    partition_id: int
    num_train: int
    num_test: int
    fingerprint: str
    domain: str
    eval_set: str
    device: str


# --- field checks --------------------------------------------------------------------------------
def typed_record(reply: Message, name: str, kind: type) -> ArrayRecord | MetricRecord | ConfigRecord:
    """Return the reply's record ``name``, which must be a ``kind``; RejectedReply names what is wrong."""
    content = reply.content
    if name not in content:
        raise RejectedReply(f"reply lacks its {name!r} record")
    record = content[name]
    if not isinstance(record, kind):
        raise RejectedReply(f"reply's {name!r} record is a {type(record).__name__}, expected {kind.__name__}")
    return record


def number(values: Mapping, key: str, *, integer: bool = False, lo: float | None = None, hi: float | None = None,
           required: bool = True) -> int | float | None:
    """Return ``values[key]`` when it is a real number (an int when ``integer``; never a bool or a
    list), finite and within [lo, hi]; None when absent and not ``required``. Raises RejectedReply."""
    if key not in values:
        if required:
            raise RejectedReply(f"reply lacks {key!r}")
        return None
    value = values[key]
    allowed = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed) or not math.isfinite(value):
        what = "an integer" if integer else "a finite number"
        raise RejectedReply(f"{key} {value!r} is not {what}" + _range(lo, hi))
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise RejectedReply(f"{key} {value!r} is not {'an integer' if integer else 'a number'}" + _range(lo, hi))
    return value


def _range(lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f" in {lo:g}..{hi:g}"
    if lo is not None:
        return f" >= {lo:g}"
    return f" <= {hi:g}" if hi is not None else ""


def text(values: Mapping, key: str) -> str:
    """Return ``values[key]`` when it is a printable string of at most 200 characters (it goes into
    logs, tables and plots). Raises RejectedReply."""
    value = values[key] if key in values else None
    if not isinstance(value, str) or len(value) > _MAX_TEXT or not value.isprintable():
        raise RejectedReply(f"{key} {_short(value)} is not a printable string of at most {_MAX_TEXT} characters")
    return value


def _short(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _one_line(message: str, limit: int = 500) -> str:
    """A node's free text for a log line: whitespace runs (newlines included) as one space, only
    printable characters, at most ``limit`` of them."""
    flat = "".join(c if c.isprintable() else " " for c in " ".join(message.split()))
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def phase_times(metrics: MetricRecord) -> dict[str, float]:
    """The node's phase times: every ``t-<phase>`` metric, a number >= 0 (``t-end`` a timestamp)."""
    return {key[len(wire.TIME_PREFIX):]: float(number(metrics, key, lo=0)) for key in metrics if key.startswith(wire.TIME_PREFIX)}


def check_error(reply: Message) -> None:
    """Raise RejectedReply naming why an error reply came: the SuperLink's stand-in for a node whose
    heartbeats stopped, else the node's own error."""
    if not reply.has_error():
        return
    if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
        raise RejectedReply("node unavailable (the SuperLink stopped hearing its heartbeats)")
    raise RejectedReply(f"the node reported an error: {_one_line(str(reply.error.reason))}")


# --- training replies ----------------------------------------------------------------------------
def check_reply(reply: Message, sent: Mapping[str, torch.Tensor], limits: ReplyLimits) -> tuple[State, TrainClaim]:
    """Validate a train reply against the state that was sent to that node.

    Returns (state, claim) when the reply carries exactly the sent keys, each Array announcing and
    holding the sent shape and dtype in no more bytes than that takes (checked before decoding),
    finite values, an update norm within ``max-update-norm`` and well-typed metrics (num-examples an
    integer in 1..max-examples, a finite train-loss, capacity-layers an integer when present, phase
    times >= 0). Raises RejectedReply otherwise.
    """
    check_error(reply)
    if wire.ARRAYS not in reply.content or wire.METRICS not in reply.content:
        raise RejectedReply("reply lacks its 'arrays' or 'metrics' record")
    arrays = typed_record(reply, wire.ARRAYS, ArrayRecord)
    metrics = typed_record(reply, wire.METRICS, MetricRecord)
    keys = set(arrays.keys())
    extra = sorted(keys - set(sent))
    missing = sorted(set(sent) - keys)
    if extra:
        raise RejectedReply(f"unexpected key {_short(extra[0])} (not sent to this node)" + _more(extra))
    if missing:
        raise RejectedReply(f"missing key {missing[0]!r}" + _more(missing))
    state: State = {}
    squared: dict[int | str, float] = {}
    for key, ref in sent.items():
        got = _decode(key, arrays[key], ref)
        if not torch.isfinite(got).all():
            raise RejectedReply(f"{key!r} contains NaN or Inf")
        group = block_of_key(key)
        group = SHARED if group is None else group
        squared[group] = squared.get(group, 0.0) + float(((got.double() - ref.double()) ** 2).sum())
        state[key] = got
    norm = math.sqrt(sum(squared.values()))
    if limits.max_update_norm and norm > limits.max_update_norm:
        raise RejectedReply(f"update norm {norm:.4g} exceeds max-update-norm {limits.max_update_norm:g}")
    examples = number(metrics, wire.NUM_EXAMPLES, integer=True, lo=1, hi=limits.max_examples)
    claim = TrainClaim(
        num_examples=int(examples),
        loss=float(number(metrics, wire.TRAIN_LOSS)) if wire.TRAIN_LOSS in metrics else math.nan,
        capacity=number(metrics, wire.CAPACITY, integer=True, required=False),
        times=phase_times(metrics),
        update_norm=norm,
        group_norms={g: math.sqrt(s) for g, s in squared.items()},
    )
    for key in (wire.EXAMPLES_SEEN, wire.STEPS):
        number(metrics, key, integer=True, lo=0, required=False)
    return state, claim


def _decode(key: str, array: object, ref: torch.Tensor) -> torch.Tensor:
    """Decode one Array after checking what it announces (type, dtype, shape) and its size against
    the tensor that was sent; then check that what it held is what it announced."""
    dtype = str(ref.numpy().dtype) if ref.dtype != torch.bfloat16 else "bfloat16"
    shape = tuple(ref.shape)
    if not hasattr(array, "dtype") or not hasattr(array, "data"):
        raise RejectedReply(f"{key!r} is a {type(array).__name__}, not an Array")
    if getattr(array, "stype", None) != "numpy.ndarray":
        raise RejectedReply(f"{key!r} has serialisation {_short(getattr(array, 'stype', None))}, expected 'numpy.ndarray'")
    announced = tuple(array.shape) if isinstance(array.shape, (tuple, list)) else array.shape
    if announced != shape:
        raise RejectedReply(f"{key!r} has shape {_short(announced)}, expected {shape}")
    if array.dtype != dtype:
        raise RejectedReply(f"{key!r} has dtype {_short(array.dtype)}, expected {dtype}")
    budget = ref.numel() * ref.element_size() + _NPY_HEADER_MAX
    if not isinstance(array.data, bytes) or len(array.data) > budget:
        size = len(array.data) if isinstance(array.data, bytes) else "?"
        raise RejectedReply(f"{key!r} holds {size} bytes, more than its shape {shape} takes (refused before decoding)")
    try:
        value = array.numpy()
    except Exception as exc:  # a malformed payload can fail anywhere in numpy's reader
        raise RejectedReply(f"arrays cannot be decoded ({key!r}: {exc.__class__.__name__}: {_one_line(str(exc), 100)})") from None
    if tuple(value.shape) != shape or str(value.dtype) != dtype:
        raise RejectedReply(f"{key!r} holds an array of shape {tuple(value.shape)} and dtype {value.dtype}, "
                            f"not the announced {shape} {dtype}")
    return torch.from_numpy(np.array(value, copy=True))


def _more(keys: list[str]) -> str:
    return f" and {len(keys) - 1} more" if len(keys) > 1 else ""


def norm_outliers(norms: Mapping[int, Mapping[int | str, float]], ratio: float) -> dict[int, str]:
    """Return the nodes whose update is out of scale with the round's others, with the reason.

    ``norms`` maps node -> its update's L2 norm per group (block index or :data:`SHARED`). A node is
    an outlier when, for some group it updated, its norm exceeds ``ratio`` times the median of the
    norms the *other* nodes that updated that group reported this round (leave-one-out, so that
    with two holders one huge update cannot drag the reference up to itself). A group with no other
    holder, or whose other holders' median is 0, is not judged. ``ratio`` 0 turns the check off.
    """
    if not ratio:
        return {}
    out: dict[int, str] = {}
    for node, groups in norms.items():
        for group, value in groups.items():
            others = [n[group] for other, n in norms.items() if other != node and group in n]
            if not others:
                continue
            reference = statistics.median(others)
            if reference > 0 and value > ratio * reference:
                where = "shared keys" if group == SHARED else f"block {group}"
                out[node] = (f"update norm of {where} {value:.4g} exceeds max-update-norm-ratio {ratio:g} x the median "
                             f"{reference:.4g} of the round's other {len(others)} update(s)")
                break
    return out


# --- evaluation replies --------------------------------------------------------------------------
def check_eval_reply(reply: Message, limits: ReplyLimits, expected_examples: int | None = None) -> EvalClaim:
    """Validate an evaluation reply.

    ``expected_examples`` is the test-split size the node reported at query time: the reply's
    num-examples must equal it. ``targets`` (optional; num-examples when absent) counts the scored
    predictions: accuracy is correct / targets and the loss their mean. Raises RejectedReply when the
    node reported an error, a count is missing, not an integer in range or not the reported size,
    accuracy lies outside [0, 1] or disagrees with correct / targets, or a value is not a finite number.
    """
    check_error(reply)
    metrics = typed_record(reply, wire.METRICS, MetricRecord)
    for key in (wire.ACCURACY, wire.LOSS, wire.NUM_EXAMPLES, wire.CORRECT):
        if key not in metrics:
            raise RejectedReply(f"evaluation reply lacks {key!r}")
    n = int(number(metrics, wire.NUM_EXAMPLES, integer=True, lo=1, hi=limits.max_examples))
    if expected_examples is not None and n != expected_examples:
        raise RejectedReply(f"num-examples {n} is not the {expected_examples} test examples the node reported when queried")
    targets = int(number(metrics, wire.TARGETS, integer=True, lo=1, hi=n * MAX_TARGETS_PER_EXAMPLE)) if wire.TARGETS in metrics else n
    correct = int(number(metrics, wire.CORRECT, integer=True, lo=0, hi=targets))
    accuracy = metrics[wire.ACCURACY]
    if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0.0 <= accuracy <= 1.0:
        raise RejectedReply(f"accuracy {_short(accuracy)} lies outside [0, 1]")  # also for NaN and lists
    if abs(accuracy - correct / targets) > 1e-9:
        what = "num-examples" if wire.TARGETS not in metrics else "targets"
        raise RejectedReply(f"accuracy {accuracy!r} disagrees with correct / {what} = {correct}/{targets}")
    loss = metrics[wire.LOSS]
    if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss) or loss < 0:
        raise RejectedReply(f"loss {_short(loss)} is not a finite number >= 0")
    return EvalClaim(float(accuracy), float(loss), n, correct, phase_times(metrics), targets)


# --- capacity-query replies ----------------------------------------------------------------------
def check_query_reply(reply: Message, limits: ReplyLimits) -> QueryClaim:
    """Validate a capacity-query reply: integer capacity-layers >= 1 (the range is the strategy's
    to check), partition-id >= -1, example counts in 0..max-examples, and printable strings for the
    fingerprint, domain, eval-set and device. Raises RejectedReply."""
    if reply.has_error():
        raise RejectedReply(f"its capacity query failed: {_one_line(str(reply.error.reason))}")
    try:
        return _query_claim(reply, limits)
    except RejectedReply as exc:
        raise RejectedReply(f"its capacity reply is unusable: {exc}") from None


def _query_claim(reply: Message, limits: ReplyLimits) -> QueryClaim:
    metrics = typed_record(reply, wire.METRICS, MetricRecord)
    config = typed_record(reply, wire.CONFIG, ConfigRecord)
    return QueryClaim(
        capacity=int(number(metrics, wire.CAPACITY, integer=True, lo=1)),
        partition_id=int(number(metrics, wire.PARTITION_ID, integer=True, lo=-1)),
        num_train=int(number(metrics, wire.NUM_TRAIN, integer=True, lo=0, hi=limits.max_examples)),
        num_test=int(number(metrics, wire.NUM_TEST, integer=True, lo=0, hi=limits.max_examples)),
        fingerprint=text(config, wire.FINGERPRINT),
        domain=text(config, wire.DOMAIN),
        eval_set=text(config, wire.EVAL_SET),
        device=text(config, wire.DEVICE),
    )
