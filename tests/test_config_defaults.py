"""One definition of each default: pyproject's ``[tool.flwr.app.config]`` (what ``flwr run`` sends)
lists every key of the config model with the model's own default."""

from __future__ import annotations

import tomllib
from pathlib import Path

from fedra_core.run_config import RunConfig, load_run_config

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def _app_config() -> dict:
    with open(PYPROJECT, "rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def test_pyproject_lists_every_key_of_the_config_model_and_every_method_knob():
    assert set(_app_config()) == set(RunConfig.all_keys())
    assert {"allocation", "head-calibration-steps", "depthfl-every", "inclusivefl-beta"} <= set(_app_config())


def test_pyproject_values_are_the_model_defaults():
    from_pyproject = load_run_config(_app_config()).as_dict()
    defaults = RunConfig().as_dict()
    differing = {k: (from_pyproject[k], defaults[k]) for k in defaults if from_pyproject[k] != defaults[k]}
    assert differing == {}
