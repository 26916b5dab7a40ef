"""Hugging Face transformers causal language models whose decoder layers are a list (``model.layers``):
Llama (SmolLM2, TinyLlama, Llama 2/3), Qwen2 and Mistral without a sliding window.

The model is a thin wrapper around transformers' own modules, taken from ``AutoModelForCausalLM``:
``embed_tokens``, ``blocks`` (one :class:`DecoderBlock` around each decoder layer, named by global
index), the final ``norm`` and, for untied checkpoints, ``lm_head``; a tied model's output layer is
``embed_tokens.weight`` itself, so a node holds it once. Its forward on right-padded ``input_ids``
(N, T) gives, at every real position, the logits of ``AutoModelForCausalLM`` with the same weights
(the causal mask keeps padding on the right out of every real token's view). The rotary position
embeddings are computed in :meth:`HFCausalLM.embed` (their ``inv_freq`` is no weight) and travel with
the hidden states with the causal mask: blocks take and return
``(hidden_states, mask, position_embeddings, position_ids)``.

The family's objective is :data:`fedra_core.objectives.CAUSAL_LM` (labels (N, T), ``-100`` where no
loss is taken). Nothing is initialised fresh: the output layer is pre-trained (``fresh_head`` False)
and frozen; LoRA goes on the attention and MLP projections, and only the final norm may train besides
(``train-norm``).

Backbones: ``hf-causal-lm:/path/to/folder`` (a transformers folder: ``config.json`` plus
``model.safetensors`` or its sharded index), a preset that provides such a folder (``smollm2-135m``,
:mod:`fedra_core.demo.smollm2`), or the family name with ``model_kwargs`` as the config (tiny seeded
models for tests; ``model_type`` defaults to ``llama``). Canonical state keys map to
``*ForCausalLM`` names by :meth:`HFCausalLM.native_key`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedra_core.families.base import ModelFamily
from fedra_core.families.hf_checkpoint import converted_weights, file_sha256, read_renamed, safetensors_shards, save_canonical
from fedra_core.objectives import CAUSAL_LM

PREFIX = "hf-causal-lm:"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_CONVERT_VERSION = 1
_BLOCK = re.compile(r"^blocks\.(\d+)\.layer(?=\.|$)")
_NATIVE_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
Hidden = tuple[torch.Tensor, Any, tuple[torch.Tensor, torch.Tensor], torch.Tensor]


class DecoderBlock(nn.Module):
    """One decoder layer on ``(hidden, mask, position_embeddings, position_ids)``; returns the same with new hidden states."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, inputs: Hidden) -> Hidden:
        hidden, mask, rotary, positions = inputs
        out = self.layer(hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions)
        return (out[0] if isinstance(out, tuple) else out), mask, rotary, positions


class CausalLMModel(nn.Module):
    """A decoder-only LM cut into the project's parts: embeddings, blocks, final norm (and an untied output layer).

    ``hf_config`` is the transformers config (attribute not named ``config``, so that peft does not
    take the wrapper for a transformers model); ``rotary_class`` builds the rotary embedding.
    """

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers import AutoModelForCausalLM

        full = AutoModelForCausalLM.from_config(config)  # resolves config._attn_implementation
        base = full.model
        self.hf_config = full.config
        self.embed_tokens = base.embed_tokens
        self.blocks = nn.Sequential(*(DecoderBlock(layer) for layer in base.layers))
        self.norm = base.norm
        self.rotary_class = type(base.rotary_emb)
        self.tied = bool(getattr(config, "tie_word_embeddings", False))
        if not self.tied:
            self.lm_head = full.lm_head
        self.embed_dim = int(config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return the logits (N, T, vocab) for a batch of right-padded token ids (N, T)."""
        family = HFCausalLM()
        return family.head(self, family.tokens_of(family.run_blocks(self, family.embed(self, input_ids))))


def parse_reference(name: str) -> str | None:
    """Return the folder of an ``hf-causal-lm:/path`` backbone name, else None."""
    return name[len(PREFIX):] if name.startswith(PREFIX) else None


def load_config(folder: str | None, kwargs: dict[str, Any]) -> Any:
    """Return the transformers config of a checkpoint folder with ``kwargs`` as overrides, or the config of
    ``model_type`` (default ``llama``) built from ``kwargs`` when ``folder`` is None; ValueError for an
    unsupported architecture."""
    from transformers import CONFIG_MAPPING

    if folder is None:
        data = {"model_type": "llama", **kwargs}
        where = "hf-causal-lm"
    else:
        path = Path(folder).expanduser() / "config.json"
        if not path.is_file():
            raise ValueError(f"backbone '{PREFIX}{folder}': no config.json in that folder (expected a transformers checkpoint folder)")
        data = {**json.loads(path.read_text()), **kwargs}
        where = f"backbone '{PREFIX}{folder}'"
    model_type = data.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{where}: model_type {model_type!r} is not supported; hf-causal-lm supports {list(SUPPORTED_MODEL_TYPES)}")
    fields = {k: v for k, v in data.items() if k != "model_type"}
    config = CONFIG_MAPPING[model_type](**fields)
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        raise ValueError(f"{where}: sliding-window attention (sliding_window={config.sliding_window}) is not supported; set it to null")
    return config


def canonical_from_native(key: str) -> str | None:
    """Map a ``*ForCausalLM`` checkpoint key to its canonical key; None for keys outside the model
    (rotary buffers). ``lm_head.weight`` maps to itself; the converter drops it for tied models."""
    if key.startswith("model.embed_tokens.") or key.startswith("model.norm."):
        return key[len("model."):]
    match = _NATIVE_LAYER.match(key)
    if match:
        if ".rotary_emb." in key:
            return None
        return f"blocks.{match.group(1)}.layer.{key[match.end():]}"
    if key.startswith("lm_head."):
        return key
    return None


class HFCausalLM(ModelFamily):
    """Decoder-only transformers LMs: token embedding, pre-norm decoder layers with rotary positions,
    final RMSNorm and the (tied or untied) output layer."""

    name = "hf-causal-lm"
    lora_targets = PROJECTIONS
    trainable_modules = ("norm",)  # the final norm, with train-norm; the output layer stays pre-trained
    head_prefix = "head."  # no module of the model: nothing is a task head
    objective = CAUSAL_LM
    fresh_head = False

    def parse_name(self, name: str) -> str | None:  # noqa: D102
        return parse_reference(name)

    def owns(self, model: nn.Module) -> bool:  # noqa: D102
        return isinstance(model, CausalLMModel)

    def create(self, kwargs: dict[str, Any], num_classes: int, registry_name: str | None = None) -> nn.Module:
        """Build the model (``num_classes`` is ignored: the vocabulary is the output space)."""
        return CausalLMModel(load_config(registry_name, kwargs))

    def embed(self, model: nn.Module, x: torch.Tensor) -> Hidden:
        """Embed right-padded token ids ``x`` (N, T); return (hidden states, the causal mask transformers
        builds for the model's attention implementation, the rotary (cos, sin), the position ids)."""
        from transformers.masking_utils import create_causal_mask

        hidden = model.embed_tokens(x)
        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)
        mask = create_causal_mask(config=model.hf_config, inputs_embeds=hidden, attention_mask=None, cache=None, position_ids=positions)
        with torch.device(x.device):
            rotary = model.rotary_class(config=model.hf_config)
        return hidden, mask, rotary(hidden, position_ids=positions), positions

    def pool(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """No pooling: every position predicts its next token."""
        return tokens

    def tokens_of(self, hidden: Any) -> torch.Tensor:
        """Return the token states of the value passed between blocks."""
        return hidden[0] if isinstance(hidden, tuple) else hidden

    def head(self, model: nn.Module, tokens: Any) -> torch.Tensor:
        """Final norm and output layer on token states of any leading shape (..., width); return the logits."""
        states = model.norm(self.tokens_of(tokens))
        weight = model.embed_tokens.weight if model.tied else model.lm_head.weight
        return nn.functional.linear(states, weight)

    def width(self, model: nn.Module) -> int:  # noqa: D102
        return int(model.hf_config.hidden_size)

    def tokenizer_folder(self, registry_name: str | None) -> str:
        """The checkpoint folder (its tokenizer and chat template); "" for a model built from ``model_kwargs``."""
        return str(Path(registry_name).expanduser().resolve()) if registry_name is not None else ""

    def recipe(self, registry_name: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``hf_class`` (``AutoModelForCausalLM``), ``hf_model_type``; ``hf_checkpoint``, the folder to load with
        ``AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **model_kwargs)``, and
        ``hf_checkpoint_sha256``, the sha256 of its ``model.safetensors`` (both None for a config built from
        ``model_kwargs``: then ``AutoConfig.for_model(**hf_config)`` and the weights file, keys mapped by
        :meth:`native_key`); ``hf_config``; ``hf_dtype``; ``transformers_version``."""
        import transformers

        config = load_config(registry_name, kwargs)
        folder = Path(registry_name).expanduser().resolve() if registry_name is not None else None
        shards = safetensors_shards(folder, f"{PREFIX}{folder}") if folder is not None else []
        return {
            "hf_class": "AutoModelForCausalLM",
            "hf_model_type": config.model_type,
            "hf_checkpoint": str(folder) if folder is not None else None,
            "hf_checkpoint_sha256": file_sha256(shards[0]) if len(shards) == 1 else None,
            "hf_config": json.loads(config.to_json_string(use_diff=False)),
            "hf_dtype": "float32",
            "transformers_version": transformers.__version__,
        }

    def native_key(self, key: str) -> str:
        """``blocks.{j}.layer.X`` -> ``model.layers.{j}.X``; ``embed_tokens`` / ``norm`` -> ``model.`` plus the same."""
        match = _BLOCK.match(key)
        if match:
            return f"model.layers.{match.group(1)}{key[match.end():]}"
        for module in ("embed_tokens", "norm"):
            if key == module or key.startswith(module + "."):
                return "model." + key
        return key

    def local_weights(self, reference: str | None) -> Path | None:
        """Convert the folder's ``model.safetensors`` (or its shards) to one file of canonical float32
        keys in ``cache_dir()/backbones``, once per source file version (path, size, mtime); return it."""
        return converted_weights(reference, PREFIX, "causal", _CONVERT_VERSION, _convert)


def _convert(folder: Path, shards: list[Path], out: Path) -> None:
    tied = bool(getattr(load_config(str(folder), {}), "tie_word_embeddings", False))

    def rename(key: str) -> str | None:  # a tied output layer is the embedding: held once
        canonical = canonical_from_native(key)
        return None if canonical is None or (tied and canonical.startswith("lm_head.")) else canonical

    tensors, digest = read_renamed(shards, rename)
    if not any(k.startswith("blocks.") for k in tensors):
        raise ValueError(f"backbone '{PREFIX}{folder}': no decoder layer (model.layers.*) in its safetensors")
    if not tied and "lm_head.weight" not in tensors:
        raise ValueError(f"backbone '{PREFIX}{folder}': tie_word_embeddings is false but the checkpoint has no lm_head.weight")
    save_canonical(tensors, out, folder, digest)
