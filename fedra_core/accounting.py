"""Privacy accounting of per-block client-level DP with Google's dp-accounting (Flower's ``flwr[dp]``
accountant): the epsilon, at a given delta, of a run after some rounds of Gaussian noise.

The accounted mechanism per released round is the Gaussian mechanism with noise multiplier z on the
vector of per-block sums (sensitivity C: one node's whole clipped update), at node level. Rounds
compose (RDP, then converted to (epsilon, delta)).

No client-sampling amplification is claimed, for any ``client-sampling``. ``all`` has nothing to
amplify; ``per-domain`` and ``uniform`` draw a fixed number of nodes without replacement, and the
dp-accounting event for that draw (``SampledWithoutReplacementDpEvent``) is defined only under
replace-one adjacency, whose sum sensitivity is 2C: with z = 1.1 over 20 rounds of 3 nodes from 6 it
gives epsilon 63.8 at delta 1e-5, worse than the 26.5 of no amplification. The Poisson event would
claim 14.4 but describes a draw the server does not make. So every run is accounted with sampling
probability 1: a valid upper bound whatever nodes the server samples (the sampling does not look at
the data).
"""

from __future__ import annotations


def _accountant():
    """Import dp-accounting's RDP accountant (ImportError naming the package when missing)."""
    from dp_accounting.rdp import RdpAccountant

    return RdpAccountant


def require_accountant() -> None:
    """Raise ImportError (one line) when dp-accounting is not installed."""
    try:
        _accountant()
    except ImportError as exc:
        raise ImportError(f"dp-accounting is not installed (pip install 'dp-accounting>=0.6,<0.7'): {exc}") from None


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """Return the epsilon at ``delta`` after ``rounds`` released rounds of the Gaussian mechanism with
    ``noise_multiplier`` (dp-accounting's RDP accountant, add/remove-one adjacency, no sampling
    amplification); 0 for no rounds, inf for a zero noise multiplier."""
    if rounds <= 0:
        return 0.0
    if noise_multiplier <= 0:
        return float("inf")
    import dp_accounting

    accountant = _accountant()()
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(noise_multiplier), rounds))
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target: float, rounds: int, delta: float) -> float:
    """Return the smallest noise multiplier (to 1e-4) whose :func:`epsilon` after ``rounds`` at
    ``delta`` is at most ``target`` (bisection)."""
    lo, hi = 1e-3, 1.0
    while epsilon(hi, rounds, delta) > target:
        lo, hi = hi, hi * 2
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if epsilon(mid, rounds, delta) > target else (lo, mid)
    return hi
