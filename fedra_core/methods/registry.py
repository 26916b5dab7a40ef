"""The one list of methods: each method module registers its class (and with it its knobs) here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from fedra_core.methods.base import Method, MethodConfig

METHODS: dict[str, type[Method]] = {}
_KNOBS: dict[str, str] = {}  # run-config key -> the method that owns it
M = TypeVar("M", bound=type[Method])


def register_method(cls: M) -> M:
    """Class decorator: make ``cls`` selectable as ``method = cls.name`` with the knobs of its
    ``config_class``; returns ``cls``. Raises ValueError for a missing name or summary, or a knob
    that another method already owns."""
    if not getattr(cls, "name", "") or not getattr(cls, "summary", ""):
        raise ValueError(f"method class {cls.__name__} needs a non-empty 'name' and 'summary'")
    if not (isinstance(cls.config_class, type) and issubclass(cls.config_class, MethodConfig)):
        raise ValueError(f"method class {cls.__name__}: config_class must subclass MethodConfig")
    for key in cls.config_class.keys():
        owner = _KNOBS.get(key, cls.name)
        if owner != cls.name:
            raise ValueError(f"method {cls.name!r}: config key {key!r} is already a knob of method {owner!r}")
    unregister_method(cls.name)  # re-registration replaces
    _KNOBS.update(dict.fromkeys(cls.config_class.keys(), cls.name))
    METHODS[cls.name] = cls
    return cls


def unregister_method(name: str) -> None:
    """Remove method ``name`` and its knobs from the registry (a plug-in's or a test's own method)."""
    METHODS.pop(name, None)
    for key in [k for k, owner in _KNOBS.items() if owner == name]:
        del _KNOBS[key]


def method_names() -> tuple[str, ...]:
    """Return the registered method names in registration order."""
    return tuple(METHODS)


def method_knobs() -> dict[str, str]:
    """Return every registered method's run-config keys, each mapped to the method that owns it."""
    return dict(_KNOBS)


def method_class(name: str) -> type[Method]:
    """Return the registered class of method ``name``; ValueError names an unknown one and the allowed ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: allowed {list(METHODS)}")
    return METHODS[name]


def get_method(name: str, options: MethodConfig | Mapping[str, Any] | None = None, num_rounds: int = 0) -> Method:
    """Return a new object of method ``name`` with its knobs and the run's length.

    ``options``: the method's config object, or a mapping of its run-config keys (validated by its
    ``config_class``; missing keys keep their defaults), or None for the defaults. Raises ValueError
    for an unknown method or a bad knob.
    """
    cls = method_class(name)
    if not isinstance(options, MethodConfig):
        options = cls.config_class.model_validate(dict(options or {}))
    return cls(options, num_rounds)
