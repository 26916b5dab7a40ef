"""Run configuration: every knob of ``[tool.flwr.app.config]``, validated by pydantic before any training."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from fedra_core.backbones import Backbone, BackboneSpec
from fedra_core.data.federation import DataSpec
from fedra_core.data.node_data import LabelSpace
from fedra_core.data.registry import dataset_entry, dataset_names
from fedra_core.lora import LoraSettings
from fedra_core.methods import Method, MethodConfig, get_method, method_class, method_knobs, method_names
from fedra_core.privacy_config import PrivacyConfig  # dp-* keys (issue 23)
from fedra_core.settings_model import SettingsModel, one_line
from fedra_core.training import TrainSettings

if TYPE_CHECKING:
    from fedra_core.trainable import ModelRecipe


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


_LORA, _TRAIN = LoraSettings(), TrainSettings()  # the engine's defaults, defined once


class RunConfig(PrivacyConfig, SettingsModel):
    """Validated run configuration (keys are the kebab-case names of pyproject's ``[tool.flwr.app.config]``).

    A method's knobs are not fields here: each method declares them in its own ``config_class``
    (:mod:`fedra_core.methods`). Their keys are gathered into ``method-options`` and validated by
    every registered method's class; :attr:`method_config` is the chosen method's.
    """

    method: str = "fedra"
    method_options: dict[str, Any] = Field(default_factory=dict, alias="method-options", exclude=True)
    num_server_rounds: int = Field(20, alias="num-server-rounds", ge=1)
    capacities: list[int] = Field(default_factory=lambda: [12, 10, 8, 6, 4, 3])
    backbone: str = "demo-vit"
    backbone_kwargs: dict[str, Any] = Field(default_factory=dict, alias="backbone-kwargs")
    backbone_weights: str = Field("default", alias="backbone-weights")
    dataset: str = "digits"
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
    # --- secure aggregation (fedra_core/secure_sum.py; the apps' secure_aggregation modules) ---
    secure_aggregation: bool = Field(False, alias="secure-aggregation")
    secagg_threshold: float = Field(0.5, alias="secagg-threshold", gt=0, le=1)
    secagg_min_holders: int = Field(2, alias="secagg-min-holders", ge=1)
    secagg_clip_range: float = Field(8.0, alias="secagg-clip-range", gt=0)
    # --- end secure aggregation ---
    _method_config: MethodConfig = PrivateAttr()
    _knobs: dict[str, Any] = PrivateAttr()  # every method's knobs, validated, by run-config key

    @model_validator(mode="before")
    @classmethod
    def _gather_method_knobs(cls, values: Any) -> Any:
        if not isinstance(values, Mapping):
            return values
        values, knobs = dict(values), method_knobs()
        options = dict(values.pop("method-options", values.pop("method_options", None)) or {})
        options.update({key: values.pop(key) for key in list(values) if key in knobs})
        return {**values, "method-options": options}

    @field_validator("run_name")
    @classmethod
    def _run_name(cls, value: str) -> str:
        if value and not _RUN_NAME.fullmatch(value):
            raise ValueError("must be one folder name of letters, digits, '.', '_' and '-', starting with a letter or digit "
                             "(the run folder stays inside 'output-dir')")
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        if value not in dataset_names():
            raise ValueError(f"unknown dataset: allowed {list(dataset_names())}")
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
        self._method_config = self._check_method_options()
        if self.server_eval_format == "imagefolder" and not self.server_eval_root:
            raise ValueError("config key 'server-eval-root' is empty: server-eval-format 'imagefolder' needs the folder of the held-out set")
        return self

    def _check_method_options(self) -> MethodConfig:
        """Validate every method's knobs; return the chosen method's. A knob of another method must
        keep its default (pyproject lists them all)."""
        owners = method_knobs()
        chosen: MethodConfig | None = None
        self._knobs = {}
        for name in method_names():
            cls = method_class(name).config_class
            given = {k: v for k, v in self.method_options.items() if owners.get(k) == name}
            try:
                options = cls.model_validate(given)
            except ValidationError as exc:
                raise ValueError(one_line(exc)) from None
            self._knobs.update(options.model_dump(by_alias=True))
            if name == self.method:
                chosen = options
                continue
            default = cls()
            for key, field in cls.model_fields.items():
                if getattr(options, key) != getattr(default, key):
                    raise ValueError(
                        f"config key '{field.alias or key}' = {getattr(options, key)!r} is an option of method '{name}'; "
                        f"method '{self.method}' does not use it (leave it at its default {getattr(default, key)!r})"
                    )
        unknown = sorted(set(self.method_options) - set(owners))
        if unknown:
            raise ValueError(f"unknown config key {unknown[0]!r}")
        assert chosen is not None, "the method was validated against the registry"
        return chosen

    @property
    def method_config(self) -> MethodConfig:
        """The chosen method's validated knobs."""
        return self._method_config

    def as_dict(self, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
        """Return the validated config by pyproject's flat keys, every method's knobs included (what
        a run folder's config.json holds), without the keys in ``exclude``."""
        out = {**self.model_dump(by_alias=True), **self._knobs}
        return {k: v for k, v in out.items() if k not in exclude}

    @classmethod
    def all_keys(cls) -> tuple[str, ...]:
        """Return every run-config key: the run's own and every registered method's knobs."""
        return tuple(k for k in cls.keys() if k != "method-options") + tuple(method_knobs())

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
            tokenizer=_tokenizer_folder(self.backbone, json.dumps(self.backbone_kwargs, sort_keys=True)),
        )

    def resolved_num_classes(self) -> int:
        """Return num-classes, else the number of class-names, else the dataset's default."""
        return self.num_classes or len(self.class_names) or dataset_entry(self.dataset).num_classes

    def label_space(self) -> LabelSpace:
        """Return the run's label space (num-classes and class-names) that every node's labels must fit."""
        return LabelSpace(self.resolved_num_classes(), tuple(self.class_names))

    def lora(self) -> LoraSettings:
        """Return the LoRA settings."""
        return LoraSettings(self.lora_rank, self.lora_alpha, self.lora_dropout, tuple(self.lora_targets) or None, self.train_norm)

    def build_method(self) -> Method:
        """Return a new object of the run's method with its knobs and the run's length."""
        return get_method(self.method, self.method_config, self.num_server_rounds)

    def recipe(self, backbone: Backbone, method: Method | None = None) -> ModelRecipe:
        """Return the recipe of the run's trainable models on ``backbone`` (a new method object
        unless ``method`` is given: a server keeps its method's state across rounds)."""
        from fedra_core.trainable import ModelRecipe  # timm and peft only where models are built

        return ModelRecipe(backbone, self.lora(), method if method is not None else self.build_method())

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


def load_run_config(values: Mapping[str, Any]) -> RunConfig:
    """Validate a Flower run config (or any mapping with the kebab-case keys) into a :class:`RunConfig`.

    Raises ConfigError with one line naming each bad key, its value and what is allowed.
    """
    try:
        return RunConfig.model_validate(dict(values))
    except ValidationError as exc:
        raise ConfigError(one_line(exc)) from None


@lru_cache(maxsize=16)
def _tokenizer_folder(backbone: str, kwargs: str) -> str:
    """The tokenizer folder of the run's backbone (a causal LM's checkpoint folder), "" when it has none or is unknown."""
    try:
        registry_name, family, _ = BackboneSpec(name=backbone, model_kwargs=json.loads(kwargs)).constructor()
    except ValueError:
        return ""
    return family.tokenizer_folder(registry_name)
