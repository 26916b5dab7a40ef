"""Optional evaluation on the server, for operators who keep a held-out set on the SuperLink host.

Off by default: in a deployment the nodes evaluate the global model on their own test splits and the
server opens no dataset. ``server-eval-format = "dataset"`` evaluates on the test split of every
domain of the run's dataset (simulation and benchmarks), ``"imagefolder"`` on
``server-eval-root/test/<class>/...``; both on ``server-device`` (the GPU when ``auto`` finds one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from fedra_core.backbones import input_size
from fedra_core.data.federation import test_sets
from fedra_core.data.node_data import NodeDataError, imagefolder_split
from fedra_core.lora import load_trainable_state, trainable_state
from fedra_core.run_config import ConfigError, RunConfig
from fedra_core.state import State
from fedra_core.trainable import ModelRecipe
from fedra_core.training import EvalResult, evaluate


@dataclass
class ServerEvaluator:
    """The global model on the server's device and the held-out test sets, by name; the model is
    built for the blocks the method evaluates and kept until other blocks are asked for."""

    recipe: ModelRecipe
    test: dict[str, Dataset]
    batch_size: int
    bf16: bool
    device: torch.device
    _blocks: tuple[int, ...] = ()
    _model: torch.nn.Module | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig, recipe: ModelRecipe) -> "ServerEvaluator":
        """Build the evaluator of ``cfg``'s server-eval settings for the models of ``recipe``;
        ConfigError names a bad value."""
        device = server_device(cfg.server_device)
        if cfg.server_eval_format == "dataset":
            test = test_sets(cfg.data_spec(), cfg.eval_max_examples)
        else:
            root = Path(cfg.server_eval_root).expanduser()
            where = f"config key 'server-eval-root' = '{root}'"
            if not (root / "test").is_dir():
                raise ConfigError(f"{where}: no test/ folder (expected {root}/test/<class>/*.png)")
            size = input_size(recipe.backbone.spec)
            try:
                split = imagefolder_split(root, "test", cfg.label_space(), size, where)
            except NodeDataError as exc:
                raise ConfigError(str(exc)) from None
            if len(split) == 0:
                raise ConfigError(f"{where}: test/ holds no image in a class folder")
            test = {root.name: split}
        return cls(recipe, test, cfg.eval_batch_size, cfg.bf16, device)

    def model(self, blocks: Sequence[int] | None = None) -> torch.nn.Module:
        """Return the evaluator's model of ``blocks`` (all by default), built on first use and kept; it
        carries the state last evaluated with it."""
        key = tuple(range(self.recipe.backbone.num_layers) if blocks is None else blocks)
        if self._model is None or key != self._blocks:
            self._blocks, self._model = key, self.recipe.build(key, str(self.device))
        return self._model

    def results(self, state: State, blocks: Sequence[int] | None = None) -> dict[str, EvalResult]:
        """Return the evaluation of the model of ``blocks`` (all by default) carrying ``state`` on
        every held-out set, by name."""
        model = self.model(blocks)
        load_trainable_state(model, {k: state[k] for k in trainable_state(model)})
        return {d: evaluate(model, ds, self.batch_size, self.device, self.bf16) for d, ds in self.test.items()}

    def __call__(self, state: State, blocks: Sequence[int] | None = None) -> dict[str, float]:
        """Return top-1 accuracy per held-out set of the model of ``blocks`` carrying ``state``."""
        return {d: r.accuracy for d, r in self.results(state, blocks).items()}


def server_device(name: str) -> torch.device:
    """Return the device of ``server-device``: ``auto`` picks CUDA when present; ConfigError for a missing GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'server-device' = 'cuda': the server has no CUDA device; use 'auto' or 'cpu'")
    return torch.device(name)
