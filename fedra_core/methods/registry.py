"""The one list of methods: each method module registers its class here."""

from __future__ import annotations

from typing import TypeVar

from fedra_core.methods.base import Method, MethodSettings

METHODS: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register_method(cls: M) -> M:
    """Class decorator: make ``cls`` selectable as ``method = cls.name``; returns ``cls``."""
    if not getattr(cls, "name", "") or not getattr(cls, "summary", ""):
        raise ValueError(f"method class {cls.__name__} needs a non-empty 'name' and 'summary'")
    METHODS[cls.name] = cls
    return cls


def method_names() -> tuple[str, ...]:
    """Return the registered method names in registration order."""
    return tuple(METHODS)


def get_method(settings: MethodSettings | str) -> Method:
    """Return a new method object for ``settings`` (or a method name with default knobs).

    Raises ValueError naming an unknown method and the allowed ones.
    """
    if isinstance(settings, str):
        settings = MethodSettings(name=settings)
    if settings.name not in METHODS:
        raise ValueError(f"unknown method {settings.name!r}: allowed {list(METHODS)}")
    return METHODS[settings.name](settings)
