"""FedRA engine: random block allocation, memory-bounded sub-models, LoRA state by global block,
per-block aggregation and the depth-based baselines. Usable without Flower.

Names are imported on first use, so that a process needing only part of the engine (a node answering
a capacity query does not need peft) does not pay for the rest.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "aggregate_fedra": "aggregation",
    "rows_to_blocks": "allocation",
    "Backbone": "backbones",
    "BackboneSpec": "backbones",
    "resolve_backbone": "backbones",
    "LoraSettings": "lora",
    "export_peft_adapter": "lora",
    "load_trainable_state": "lora",
    "trainable_state": "lora",
    "Method": "methods",
    "MethodConfig": "methods",
    "ModelRecipe": "trainable",
    "get_method": "methods",
    "method_names": "methods",
    "register_method": "methods",
    "block_of_key": "state",
    "select_state": "state",
    "state_nbytes": "state",
    "build_submodel": "submodel",
    "EvalResult": "training",
    "TrainResult": "training",
    "TrainSettings": "training",
    "evaluate": "training",
    "train_local": "training",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Import ``name`` from the engine module that defines it, on first use."""
    if name not in _WHERE:
        raise AttributeError(f"module 'fedra_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fedra_core.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
