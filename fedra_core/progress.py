"""Progress bars for the slow one-off builds (digits benchmark, demo backbone pre-training).

The bars go to stderr and only show when stderr is a terminal (tqdm's ``disable=None``), so logs, CI and
pytest stay short. They only report: nothing they do touches the data, the weights or any random generator.
"""

from __future__ import annotations

import sys

from tqdm import tqdm

# for bars whose units are weighted work, not items: the rate would mean nothing, so show only the time
WEIGHTED_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}{postfix}]"


def progress_bar(total: float, desc: str, *, unit: str = "it", weighted: bool = False) -> tqdm:
    """Return a tqdm bar on stderr (silent unless stderr is a terminal) with an estimate of the time left.

    ``weighted``: the total counts work units of unequal cost, so only the percentage and times are shown.
    Use it as a context manager and advance it with ``update(n)``.
    """
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=None,
        dynamic_ncols=True,
        mininterval=0.5,
        bar_format=WEIGHTED_FORMAT if weighted else None,
    )
