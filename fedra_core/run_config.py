"""Run configuration: every knob of ``[tool.flwr.app.config]``, validated by pydantic before any training."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from fedra_core.backbones import BackboneSpec
from fedra_core.data.federation import DataSpec
from fedra_core.data.node_data import LabelSpace
from fedra_core.lora import LoraSettings
from fedra_core.methods import Method, MethodSettings, get_method, method_names
from fedra_core.methods.base import ALLOCATIONS
from fedra_core.training import TrainSettings


class ConfigError(ValueError):
    """A configuration value is invalid; the message is one line naming the key, the value and what is allowed."""


_INTEGER = re.compile(r"[+-]?\d+")
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_SEED = 2**31 - 1


def _parse_int_list(value: Any, key: str) -> list[int]:
    """Parse ``12,10,3`` (spaces around entries allowed) or a list of ints; an empty entry, an entry
    that is not one integer (``12 3``) or a bool is refused."""
    items = list(value) if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for item in items:
        if isinstance(item, bool) or not (isinstance(item, int) or _INTEGER.fullmatch(str(item).strip())):
            what = "an empty entry" if not str(item).strip() else f"entry {str(item).strip()!r}"
            raise ValueError(f"{key} must be a comma-separated list of integers (found {what})")
        out.append(int(str(item).strip()))
    return out


_LORA, _TRAIN, _METHOD = LoraSettings(), TrainSettings(), MethodSettings()  # the engine's defaults, defined once


class RunConfig(BaseModel):
    """Validated run configuration (keys are the kebab-case names of pyproject's ``[tool.flwr.app.config]``)."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", frozen=True)

    method: str = _METHOD.name
    num_server_rounds: int = Field(20, alias="num-server-rounds", ge=1)
    allocation: Literal[ALLOCATIONS] = _METHOD.allocation  # type: ignore[valid-type]  (the one list of policies)
    head_calibration_steps: int = Field(_METHOD.head_calibration_steps, alias="head-calibration-steps", ge=0)
    capacities: list[int] = Field(default_factory=lambda: [12, 10, 8, 6, 4, 3])
    backbone: str = "demo-vit"
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict, alias="backbone-kwargs")
    backbone_weights: str = Field("default", alias="backbone-weights")
    dataset: Literal["digits", "domainnet", "nicopp"] = "digits"
    data_root: str = Field("", alias="data-root")
    domains: list[str] = Field(default_factory=list)
    num_classes: int = Field(0, alias="num-classes", ge=0)
    class_names: list[str] = Field(default_factory=list, alias="class-names")
    img_size: int = Field(224, alias="img-size", ge=16)
    partitioning: Literal["feature", "feature-label"] = "feature"
    clients_per_domain: int = Field(5, alias="clients-per-domain", ge=1)
    dirichlet_alpha: float = Field(0.5, alias="dirichlet-alpha", gt=0)
    client_sampling: Literal["all", "per-domain", "uniform"] = Field("all", alias="client-sampling")
    clients_per_round: int = Field(0, alias="clients-per-round", ge=0)
    lora_rank: int = Field(_LORA.rank, alias="lora-rank", ge=1)
    lora_alpha: float = Field(_LORA.alpha, alias="lora-alpha", gt=0)
    lora_dropout: float = Field(_LORA.dropout, alias="lora-dropout", ge=0, lt=1)
    lora_targets: list[str] = Field(default_factory=list, alias="lora-targets")
    train_norm: bool = Field(_LORA.train_norm, alias="train-norm")
    lr: float = Field(_TRAIN.lr, gt=0)
    momentum: float = Field(_TRAIN.momentum, ge=0, lt=1)
    weight_decay: float = Field(_TRAIN.weight_decay, alias="weight-decay", ge=0)
    clip_norm: float = Field(_TRAIN.clip_norm, alias="clip-norm", gt=0)
    batch_size: int = Field(_TRAIN.batch_size, alias="batch-size", ge=1)
    local_epochs: int = Field(_TRAIN.local_epochs, alias="local-epochs", ge=1)
    local_steps: int = Field(0, alias="local-steps", ge=0)
    aggregation: Literal["uniform", "examples"] = "uniform"
    depthfl_every: int = Field(_METHOD.depthfl_every, alias="depthfl-every", ge=1)
    depthfl_ramp_rounds: int = Field(_METHOD.depthfl_ramp_rounds, alias="depthfl-ramp-rounds", ge=0)
    inclusivefl_beta: float = Field(_METHOD.inclusivefl_beta, alias="inclusivefl-beta", ge=0, le=1)
    eval_every: int = Field(1, alias="eval-every", ge=0)
    eval_batch_size: int = Field(256, alias="eval-batch-size", ge=1)
    eval_max_examples: int = Field(0, alias="eval-max-examples", ge=0)
    server_eval_format: Literal["", "dataset", "imagefolder"] = Field("", alias="server-eval-format")
    server_eval_root: str = Field("", alias="server-eval-root")
    server_device: Literal["auto", "cpu", "cuda"] = Field("auto", alias="server-device")
    seed: int = Field(0, ge=0, le=MAX_SEED)
    output_dir: str = Field("runs", alias="output-dir")
    run_name: str = Field("", alias="run-name")
    resume: bool = False
    tracking: Literal["none", "tensorboard", "mlflow"] = "none"  # server_app.tracking.TRACKERS
    min_replies: int = Field(1, alias="min-replies", ge=1)
    max_update_norm: float = Field(0.0, alias="max-update-norm", ge=0)
    max_update_norm_ratio: float = Field(10.0, alias="max-update-norm-ratio", ge=0)
    max_examples: int = Field(10_000_000, alias="max-examples", ge=1)
    round_timeout: float = Field(3600.0, alias="round-timeout", gt=0)
    query_timeout: float = Field(60.0, alias="query-timeout", gt=0)
    bf16: bool = _TRAIN.bf16

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1 for a number; a boolean where a number belongs is a mistake
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in (int, float):
            raise ValueError("must be a number, not a boolean")
        return value

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, value: str) -> str:
        if value and not _RUN_NAME.fullmatch(value):
            raise ValueError("must be one folder name of letters, digits, '.', '_' and '-', starting with a letter or digit "
                             "(the run folder stays inside 'output-dir')")
        return value

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value not in method_names():
            raise ValueError(f"unknown method: allowed {list(method_names())}")
        return value

    @field_validator("capacities", mode="before")
    @classmethod
    def _capacities(cls, value: Any) -> list[int]:
        caps = _parse_int_list(value, "capacities")
        if not caps:
            raise ValueError("capacities must list at least one capacity")
        for k in caps:  # the upper bound, the backbone's depth, is checked by check_against_backbone
            if k < 1:
                raise ValueError(f"capacity {k} must be at least 1 (a node holds 1..num_layers blocks)")
        return caps

    @field_validator("domains", "lora_targets", "class_names", mode="before")
    @classmethod
    def _str_list(cls, value: Any) -> list[str]:
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        return [p.strip() for p in str(value).split(",") if p.strip()]

    @field_validator("backbone_kwargs", mode="before")
    @classmethod
    def _kwargs(cls, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        if not str(value).strip():
            return {}
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"must be a JSON object such as '{{\"depth\": 12}}' ({exc.msg})") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object")
        return parsed

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        if self.class_names and self.num_classes and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"config key 'class-names' lists {len(self.class_names)} names but 'num-classes' = {self.num_classes}: give one name per class"
            )
        if self.head_calibration_steps and self.method != "fedra":
            raise ValueError(
                f"config key 'head-calibration-steps' = {self.head_calibration_steps} is a FedRA option; "
                f"method '{self.method}' does not use it (set it to 0)"
            )
        if self.server_eval_format == "imagefolder" and not self.server_eval_root:
            raise ValueError("config key 'server-eval-root' is empty: server-eval-format 'imagefolder' needs the folder of the held-out set")
        return self

    # --- conversions to the engine's settings -------------------------------------------------
    def backbone_spec(self, weights_override: str | None = None) -> BackboneSpec:
        """Return the backbone spec (``weights_override`` replaces the run's weights, e.g. a node's local file)."""
        return BackboneSpec(
            name=self.backbone,
            model_kwargs=dict(self.backbone_kwargs),
            weights=weights_override or self.backbone_weights,
            num_classes=self.resolved_num_classes(),
            seed=self.seed,
        )

    def data_spec(self) -> DataSpec:
        """Return the data spec (dataset, domains, partitioning)."""
        return DataSpec(
            dataset=self.dataset,
            root=self.data_root,
            domains=tuple(self.domains),
            partitioning=self.partitioning,
            clients_per_domain=self.clients_per_domain,
            alpha=self.dirichlet_alpha,
            num_classes=self.num_classes,
            img_size=self.img_size,
            seed=self.seed,
        )

    def resolved_num_classes(self) -> int:
        """Return num-classes, else the number of class-names, else the dataset's default."""
        return self.num_classes or len(self.class_names) or {"digits": 10, "domainnet": 100, "nicopp": 60}[self.dataset]

    def label_space(self) -> LabelSpace:
        """Return the run's label space (num-classes and class-names) that every node's labels must fit."""
        return LabelSpace(self.resolved_num_classes(), tuple(self.class_names))

    def lora(self) -> LoraSettings:
        """Return the LoRA settings."""
        return LoraSettings(self.lora_rank, self.lora_alpha, self.lora_dropout, tuple(self.lora_targets) or None, self.train_norm)

    def method_settings(self) -> MethodSettings:
        """Return the method settings."""
        return MethodSettings(
            name=self.method,
            allocation=self.allocation,
            head_calibration_steps=self.head_calibration_steps,
            depthfl_every=self.depthfl_every,
            depthfl_ramp_rounds=self.depthfl_ramp_rounds,
            inclusivefl_beta=self.inclusivefl_beta,
            num_rounds=self.num_server_rounds,
        )

    def build_method(self) -> Method:
        """Return a new object of the run's method with its knobs."""
        return get_method(self.method_settings())

    def train_settings(self) -> TrainSettings:
        """Return the local training settings."""
        return TrainSettings(
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            clip_norm=self.clip_norm,
            batch_size=self.batch_size,
            local_epochs=self.local_epochs,
            max_steps=self.local_steps or None,
            bf16=self.bf16,
        )

    def check_against_backbone(self, num_layers: int) -> None:
        """Raise ConfigError when a capacity exceeds the backbone's depth."""
        for k in self.capacities:
            if not 1 <= k <= num_layers:
                raise ConfigError(f"config key 'capacities': capacity {k} is outside 1..{num_layers} (the backbone's depth)")


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "config"
        value = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a check across keys: its message names them
            parts.append(msg)
        elif err["type"] == "extra_forbidden":
            parts.append(f"unknown config key {key!r}")
        else:
            parts.append(f"config key {key!r} = {value!r}: {msg}")
    return "; ".join(parts)


def load_run_config(values: Mapping[str, Any]) -> RunConfig:
    """Validate a Flower run config (or any mapping with the kebab-case keys) into a :class:`RunConfig`.

    Raises ConfigError with one line naming each bad key, its value and what is allowed.
    """
    try:
        return RunConfig.model_validate(dict(values))
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None

