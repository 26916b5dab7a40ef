"""The project's cache folder (built datasets, backbone weights)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Return the project's cache folder (``$FEDRA_CACHE`` or ``~/.cache/fedra``), created if needed."""
    root = Path(os.environ.get("FEDRA_CACHE", Path.home() / ".cache" / "fedra")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
