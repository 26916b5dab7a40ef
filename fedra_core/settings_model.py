"""The base of every validated settings model (the run config, each method's knobs).

Keys are the kebab-case names of pyproject's ``[tool.flwr.app.config]`` (field aliases); unknown keys
are refused, values are frozen, and a boolean where a number belongs is a mistake (pydantic's lax mode
would read ``true`` as 1).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator


class SettingsModel(BaseModel):
    """A frozen pydantic model of run-config keys: aliases are the keys, extra keys are refused."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in (int, float):
            raise ValueError("must be a number, not a boolean")
        return value

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        """Return the model's run-config keys (the fields' aliases, else their names)."""
        return tuple(field.alias or name for name, field in cls.model_fields.items())


def one_line(exc: ValidationError) -> str:
    """Return a pydantic error as one line naming each bad key, its value and what is allowed."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a check across keys: its message names them
            parts.append(msg)
        elif err["type"] == "extra_forbidden":
            parts.append(f"unknown config key {key!r}")
        else:
            parts.append(f"config key {key!r} = {err.get('input')!r}: {msg}")
    return "; ".join(parts)
