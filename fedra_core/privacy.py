"""Client-level differential privacy, per block: the node clips its whole update, the server adds
Gaussian noise to each block's sum over its holders and divides by the holder count.

Why per block: Flower's central-DP wrappers add noise of standard deviation z*C/m to the mean over
the m sampled clients, which assumes every client updates every parameter. A block held by k of the
m clients would then be under-noised by m/k. Here each key's SUM over the k clients that returned it
gets N(0, (z*C)^2) per element, then the sum is divided by k, so every block gets the noise the
Gaussian mechanism needs whatever its holder count (a node's whole update has L2 norm <= C, so the
vector of all per-key sums has sensitivity C; the division by public counts is post-processing).

Pure functions on state dicts (canonical key -> tensor); the node (:func:`clip_update`), the
server's aggregation (:func:`noisy_holder_mean`) and its reply check (:func:`clip_excess`) use them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedra_core.aggregation import key_holders
from fedra_core.state import State

# tag of the noise stream in the generator seeds (seed, round, tag): the allocation draws from
# (seed, round) and client sampling from (seed, round, 1), so the noise never shares their stream
NOISE_STREAM = 0x6470  # "dp"


@dataclass(frozen=True)
class DPSettings:
    """Per-block central DP of one run: noise multiplier z (> 0), clip norm C (> 0) of a node's
    whole update, and the delta at which epsilon is reported."""

    noise_multiplier: float
    clip_norm: float
    delta: float = 1e-5

    @property
    def noise_std(self) -> float:
        """Standard deviation z*C of the noise added to each element of a block's sum."""
        return self.noise_multiplier * self.clip_norm


def update_norm(trained: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor]) -> float:
    """Return the L2 norm of ``trained - received`` over every key of ``trained`` (float64)."""
    return math.sqrt(sum(float(((trained[k].double() - received[k].double()) ** 2).sum()) for k in trained))


def clip_update(trained: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor], clip_norm: float) -> State:
    """Return the trained state with its update clipped to L2 norm <= ``clip_norm``.

    The update is ``trained - received`` over every key (blocks and shared keys such as the head,
    one vector); it is scaled by ``min(1, clip_norm / ||update||)`` and added back to ``received``,
    in float64 and cast to each key's dtype. Raises ValueError when the key sets differ or
    ``clip_norm`` is not positive.
    """
    if not clip_norm > 0:
        raise ValueError(f"clip norm {clip_norm!r} must be > 0")
    if set(trained) != set(received):
        missing = sorted(set(trained) ^ set(received))
        raise ValueError(f"trained and received states differ in key {missing[0]!r}")
    norm = update_norm(trained, received)
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    if scale == 1.0:
        return {k: v.clone() for k, v in trained.items()}
    return {
        k: (received[k].double() + scale * (v.double() - received[k].double())).to(v.dtype)
        for k, v in trained.items()
    }


def clip_tolerance(clip_norm: float, sent: Mapping[str, torch.Tensor]) -> float:
    """Return how far above ``clip_norm`` a clipped update's norm may come out from rounding alone:
    adding the scaled update back to the received tensors rounds each element to its dtype (at most
    half an ulp of its value), so the error is bounded by eps * (||sent|| + C), plus 1e-6 * C."""
    eps = max((torch.finfo(t.dtype).eps for t in sent.values() if t.is_floating_point()), default=0.0)
    sent_norm = math.sqrt(sum(float((t.double() ** 2).sum()) for t in sent.values()))
    return 1e-6 * clip_norm + eps * (sent_norm + clip_norm)


def clip_excess(norm: float, clip_norm: float, sent: Mapping[str, torch.Tensor]) -> str | None:
    """Return a one-line reason when an update of L2 ``norm`` exceeds ``clip_norm`` by more than
    :func:`clip_tolerance` (the node did not clip), else None."""
    if norm <= clip_norm + clip_tolerance(clip_norm, sent):
        return None
    return f"update norm {norm:.6g} exceeds dp-clip-norm {clip_norm:g} (a DP node clips its whole update before replying)"


def noise_generator(seed: int, server_round: int) -> torch.Generator:
    """Return the noise generator of one round, derived from (seed, round, :data:`NOISE_STREAM`):
    reproducible, the same after a resume, and apart from the allocation and sampling streams."""
    state = np.random.SeedSequence([seed, server_round, NOISE_STREAM]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) >> 1)


def noisy_holder_mean(
    global_state: Mapping[str, torch.Tensor],
    client_states: Sequence[Mapping[str, torch.Tensor]],
    allocation: np.ndarray,
    noise_std: float,
    generator: torch.Generator,
) -> State:
    """Fold client states into a new global state with per-block Gaussian noise (equal weights).

    Each key's new value is ``global + (sum over its holders of (state - global) + N(0, noise_std^2))
    / k``, k the number of clients that returned the key (for a block key only clients whose
    ``allocation`` row holds the block may); a key nobody returned keeps its value and draws no
    noise. Noise is drawn in the order of ``global_state``'s keys from ``generator`` (float64), so
    the same generator gives the same result. Raises ValueError for a key outside the global state
    or the client's allocation, a wrong shape, or mismatched sizes.
    """
    holders = key_holders(global_state, client_states, allocation)
    out: State = {}
    for key, old in global_state.items():
        ids = holders[key]
        if not ids:
            out[key] = old.detach().clone()
            continue
        base = old.detach().double()
        total = torch.zeros_like(base)
        for i in ids:
            total += client_states[i][key].detach().double() - base
        total += torch.randn(base.shape, generator=generator, dtype=torch.float64) * noise_std
        out[key] = (base + total / len(ids)).to(old.dtype)
    return out


def noisy_segment_sums(
    sums: Mapping[int, tuple[np.ndarray, float]], noise_std: float, generator: torch.Generator
) -> dict[int, tuple[np.ndarray, float]]:
    """Add N(0, ``noise_std``^2) to every element of each holder group's summed delta, as unmasked by
    secure aggregation (segment id -> (flat sum, weight sum)); the weight sums (the holder counts,
    public) stay. Groups are noised in ascending id order from ``generator``: the same generator
    gives the same result. The per-block calibration of :func:`noisy_holder_mean`, for sums the
    server only ever sees whole."""
    out: dict[int, tuple[np.ndarray, float]] = {}
    for seg_id in sorted(sums):
        total, weight = sums[seg_id]
        noise = torch.randn(total.shape, generator=generator, dtype=torch.float64).numpy() * noise_std
        out[seg_id] = (total + noise, weight)
    return out
