"""FedRA engine: random block allocation, memory-bounded sub-models, LoRA state by global block,
per-block aggregation and the depth-based baselines. Usable without Flower."""

from fedra_core.aggregation import aggregate_fedra
from fedra_core.allocation import POLICIES, rows_to_blocks, sample_allocation
from fedra_core.backbones import Backbone, BackboneSpec, resolve_backbone
from fedra_core.lora import LoraSettings, export_peft_adapter, load_trainable_state, trainable_state
from fedra_core.methods import METHODS, MethodSettings, allocate, build_trainable_model, client_keys
from fedra_core.state import block_of_key, select_state, state_nbytes
from fedra_core.submodel import build_submodel
from fedra_core.training import EvalResult, TrainResult, TrainSettings, evaluate, train_local

__all__ = [
    "POLICIES",
    "METHODS",
    "Backbone",
    "BackboneSpec",
    "EvalResult",
    "LoraSettings",
    "MethodSettings",
    "TrainResult",
    "TrainSettings",
    "aggregate_fedra",
    "allocate",
    "block_of_key",
    "build_submodel",
    "build_trainable_model",
    "client_keys",
    "evaluate",
    "export_peft_adapter",
    "load_trainable_state",
    "resolve_backbone",
    "rows_to_blocks",
    "sample_allocation",
    "select_state",
    "state_nbytes",
    "train_local",
    "trainable_state",
]
