"""Checks on every client reply before it may touch the global model."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from flwr.app import Message
from flwr.common.constant import ErrorCode

from fedra_core.state import State


NO_REPLY = "no reply (node failed or timed out)"


class RejectedReply(Exception):
    """A reply failed validation; the message says why in one line."""


def _check_error(reply: Message) -> None:
    """Raise RejectedReply naming why an error reply came: the SuperLink's stand-in for a node whose
    heartbeats stopped, else the node's own error."""
    if not reply.has_error():
        return
    if reply.error.code == ErrorCode.NODE_UNAVAILABLE:
        raise RejectedReply("node unavailable (the SuperLink stopped hearing its heartbeats)")
    raise RejectedReply(f"the node reported an error: {reply.error.reason}")


@dataclass(frozen=True)
class ReplyLimits:
    """Bounds a reply must respect: the L2 norm of its update (0: unbounded) and the example count."""

    max_update_norm: float = 0.0
    max_examples: int = 10_000_000


def check_reply(reply: Message, sent: Mapping[str, torch.Tensor], limits: ReplyLimits) -> tuple[State, dict[str, float]]:
    """Validate a train reply against the state that was sent to that node.

    Returns (state, metrics) when the reply carries exactly the sent keys with the same shapes and
    dtypes, finite values, an update norm within bounds and a sane example count. Raises
    RejectedReply otherwise.
    """
    _check_error(reply)
    content = reply.content
    if "arrays" not in content or "metrics" not in content:
        raise RejectedReply("reply lacks its 'arrays' or 'metrics' record")
    arrays = content["arrays"]
    keys = set(arrays.keys())
    extra = sorted(keys - set(sent))
    missing = sorted(set(sent) - keys)
    if extra:
        raise RejectedReply(f"unexpected key {extra[0]!r} (not sent to this node)" + _more(extra))
    if missing:
        raise RejectedReply(f"missing key {missing[0]!r}" + _more(missing))
    try:
        state = arrays.to_torch_state_dict()
    except Exception as exc:  # a malformed array can fail in numpy or torch
        raise RejectedReply(f"arrays cannot be decoded ({exc.__class__.__name__}: {exc})") from None
    squared = 0.0
    for key, ref in sent.items():
        got = state[key]
        if tuple(got.shape) != tuple(ref.shape):
            raise RejectedReply(f"{key!r} has shape {tuple(got.shape)}, expected {tuple(ref.shape)}")
        if got.dtype != ref.dtype:
            raise RejectedReply(f"{key!r} has dtype {got.dtype}, expected {ref.dtype}")
        if not torch.isfinite(got).all():
            raise RejectedReply(f"{key!r} contains NaN or Inf")
        squared += float(((got.double() - ref.double()) ** 2).sum())
    norm = squared**0.5
    if limits.max_update_norm and norm > limits.max_update_norm:
        raise RejectedReply(f"update norm {norm:.4g} exceeds max-update-norm {limits.max_update_norm:g}")
    metrics = dict(content["metrics"])
    examples = metrics.get("num-examples")
    if not isinstance(examples, int) or isinstance(examples, bool) or not 0 < examples <= limits.max_examples:
        raise RejectedReply(f"num-examples {examples!r} is not an integer in 1..{limits.max_examples}")
    metrics["update-norm"] = norm
    return state, metrics


def _more(keys: list[str]) -> str:
    return f" and {len(keys) - 1} more" if len(keys) > 1 else ""


def check_eval_reply(reply: Message, limits: ReplyLimits) -> dict[str, float]:
    """Validate an evaluation reply; return its metrics (accuracy, loss, num-examples, correct).

    Raises RejectedReply when the node reported an error, a count is missing or not an integer in
    range, accuracy lies outside [0, 1] or disagrees with correct / num-examples, or a value is NaN.
    """
    _check_error(reply)
    if "metrics" not in reply.content:
        raise RejectedReply("reply lacks its 'metrics' record")
    metrics = dict(reply.content["metrics"])
    for key in ("accuracy", "loss", "num-examples", "correct"):
        if key not in metrics:
            raise RejectedReply(f"evaluation reply lacks {key!r}")
    n, correct = metrics["num-examples"], metrics["correct"]
    if not isinstance(n, int) or isinstance(n, bool) or not 0 < n <= limits.max_examples:
        raise RejectedReply(f"num-examples {n!r} is not an integer in 1..{limits.max_examples}")
    if not isinstance(correct, int) or isinstance(correct, bool) or not 0 <= correct <= n:
        raise RejectedReply(f"correct {correct!r} is not an integer in 0..{n}")
    accuracy, loss = float(metrics["accuracy"]), float(metrics["loss"])
    if not 0.0 <= accuracy <= 1.0:  # also false for NaN
        raise RejectedReply(f"accuracy {accuracy!r} lies outside [0, 1]")
    if abs(accuracy - correct / n) > 1e-9:
        raise RejectedReply(f"accuracy {accuracy!r} disagrees with correct / num-examples = {correct}/{n}")
    if not math.isfinite(loss) or loss < 0:
        raise RejectedReply(f"loss {loss!r} is not a finite number >= 0")
    return metrics
