"""Recombine many Shamir secrets shared with Flower's ``create_shares`` from one set of responders.

Flower's ``combine_shares`` interpolates each 16-byte chunk of each secret on its own (with an
inversion per share), which makes a round's unmasking cubic in the number of nodes. All secrets of
a round are recombined from the same responders, so the Lagrange coefficients at zero are computed
once (O(t^2)) and every chunk is then a weighted sum of t shares (O(t)): quadratic in all. The
field is PyCryptodome's GF(2^128) (the one ``Crypto.Protocol.SecretSharing.Shamir`` uses, without
the ``ssss`` diffusion: Flower's choice); a test checks it against ``combine_shares``.
"""

from __future__ import annotations

from collections.abc import Sequence

from Crypto.Protocol.SecretSharing import _Element
from Crypto.Util.Padding import unpad


class ShareError(ValueError):
    """Shares cannot be recombined; the message says why in one line."""


def lagrange_at_zero(xs: Sequence[int]) -> list[_Element]:
    """Return the Lagrange coefficients at 0 of the distinct points ``xs`` (share indexes >= 1)."""
    if len(set(xs)) != len(xs) or any(x < 1 for x in xs):
        raise ShareError(f"share indexes {list(xs)} are not distinct positive integers")
    points = [_Element(x) for x in xs]
    out = []
    for j, xj in enumerate(points):
        numerator, denominator = _Element(1), _Element(1)
        for m, xm in enumerate(points):
            if m != j:
                numerator *= xm
                denominator *= xj + xm  # subtraction is addition in GF(2^128)
        out.append(numerator * denominator.inverse())
    return out


def combine_many(xs: Sequence[int], shares: Sequence[Sequence[bytes]]) -> list[bytes]:
    """Return every secret from its shares: ``shares[r][s]`` is responder r's share of secret s,
    made by ``create_shares`` for participant ``xs[r]`` (share index ``xs[r]``); pass exactly the
    threshold's number of responders. Raises ShareError on a malformed share."""
    coefficients = lagrange_at_zero(xs)
    if not shares or any(len(row) != len(shares[0]) for row in shares) or len(shares) != len(xs):
        raise ShareError("every responder must give one share of every secret")
    secrets = []
    for s in range(len(shares[0])):
        column = [bytes(row[s]) for row in shares]
        size = len(column[0])
        if size < 20 or (size - 4) % 16 or any(len(c) != size for c in column):
            raise ShareError(f"the shares of secret {s} do not have one length of 4 + 16k bytes")
        for x, share in zip(xs, column):
            if int.from_bytes(share[:4], "little") != x:
                raise ShareError(f"a share of secret {s} carries index {int.from_bytes(share[:4], 'little')}, expected {x}")
        padded = bytearray()
        for start in range(4, size, 16):
            acc = _Element(0)
            for coefficient, share in zip(coefficients, column):
                acc += coefficient * _Element(share[start:start + 16])
            padded += acc.encode()
        try:
            secrets.append(unpad(bytes(padded), 16))
        except ValueError:
            raise ShareError(f"secret {s} does not recombine (inconsistent shares)") from None
    return secrets
