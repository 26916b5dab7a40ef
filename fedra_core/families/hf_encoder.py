"""Hugging Face transformers BERT-style text encoders (BERT, MiniLM and other ``model_type: bert`` checkpoints).

The model is a thin wrapper around transformers' own modules: ``embeddings`` (``BertEmbeddings``),
``blocks`` (one :class:`EncoderBlock` around each ``BertLayer``, named by global index), ``pooler``
(``BertPooler``, frozen, as ``BertForSequenceClassification`` uses it), a classifier dropout and
``head`` (``nn.Linear(hidden, num_classes)``). Its forward on ``input_ids`` gives the logits of
``BertForSequenceClassification`` in eval mode with the same weights and
``attention_mask = input_ids != pad_token_id``. The 4D attention mask is built once, after the
embedding, by transformers' own ``create_bidirectional_mask`` for the model's attention
implementation (as ``BertModel`` builds it), and travels with the hidden states: blocks take and
return ``(hidden_states, mask)`` tuples.

Backbones: ``hf:/path/to/folder`` (a local checkpoint folder: ``config.json`` plus
``model.safetensors``, or its sharded index; ``pytorch_model.bin`` is never read), or the family
name ``hf-encoder`` with ``model_kwargs`` as ``BertConfig(**model_kwargs)`` (tiny seeded configs for
tests). ``model_kwargs`` override the folder's config. Canonical state keys map to
``BertForSequenceClassification`` names by :meth:`HFEncoder.native_key`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedra_core.families.base import ModelFamily
from fedra_core.families.hf_checkpoint import converted_weights, read_renamed, save_canonical

HF_PREFIX = "hf:"
SUPPORTED_MODEL_TYPES = ("bert",)
_CONVERT_VERSION = 1
_BLOCK = re.compile(r"^blocks\.(\d+)\.layer(?=\.|$)")
_NATIVE_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")


class EncoderBlock(nn.Module):
    """One encoder layer on ``(hidden_states, mask)``; returns ``(new_hidden_states, mask)``."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor | None]) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden, mask = inputs
        return self.layer(hidden, mask), mask


class HFEncoderClassifier(nn.Module):
    """A BERT encoder cut into the project's parts: embeddings, blocks, pooler, dropout, head.

    ``hf_config`` is the transformers config (with the resolved attention implementation); the
    attribute is not named ``config`` so that peft does not take the wrapper for a transformers model.
    """

    def __init__(self, config: Any, num_classes: int) -> None:
        super().__init__()
        from transformers import BertModel

        bert = BertModel(config, add_pooling_layer=True)  # resolves config._attn_implementation
        self.hf_config = config
        self.embeddings = bert.embeddings
        # BertEmbeddings' position_ids / token_type_ids are non-persistent buffers: a sub-model built on the
        # meta device would keep them there (they are in no state dict). embed() passes both explicitly.
        for buffer in ("position_ids", "token_type_ids"):
            if buffer in self.embeddings._buffers:
                delattr(self.embeddings, buffer)
        self.blocks = nn.Sequential(*(EncoderBlock(layer) for layer in bert.encoder.layer))
        self.pooler = bert.pooler
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(config.hidden_size, num_classes)
        self.embed_dim = int(config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return the classifier logits for a batch of token ids (N, T)."""
        return HFEncoder().forward(self, input_ids)


def parse_reference(name: str) -> str | None:
    """Return the folder of an ``hf:/path`` backbone name, else None."""
    if name.startswith(HF_PREFIX):
        return name[len(HF_PREFIX):]
    return None


def load_config(folder: str | None, kwargs: dict[str, Any]) -> Any:
    """Return the ``BertConfig`` of a checkpoint folder with ``kwargs`` as overrides, or
    ``BertConfig(**kwargs)`` when ``folder`` is None; ValueError for another architecture."""
    from transformers import BertConfig

    if folder is None:
        config = BertConfig(**kwargs)
    else:
        path = Path(folder).expanduser() / "config.json"
        if not path.is_file():
            raise ValueError(f"backbone 'hf:{folder}': no config.json in that folder (expected a transformers checkpoint folder)")
        data = json.loads(path.read_text())
        model_type = data.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"backbone 'hf:{folder}': model_type {model_type!r} is not supported; the hf-encoder family "
                f"supports {list(SUPPORTED_MODEL_TYPES)} (BERT, MiniLM and other BERT-architecture encoders)"
            )
        config = BertConfig.from_dict({**data, **kwargs})
    if config.is_decoder or config.add_cross_attention:
        raise ValueError("hf-encoder: is_decoder / add_cross_attention configs are not encoders; use a plain BERT encoder config")
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        raise ValueError(f"hf-encoder: position_embedding_type {config.position_embedding_type!r} is not supported (only absolute)")
    return config


def canonical_from_native(key: str) -> str | None:
    """Map a checkpoint key (``BertModel`` names, with or without the ``bert.`` prefix) to its
    canonical key; None for keys that are not part of the encoder (MLM / NSP heads, a classifier, buffers)."""
    key = key.removeprefix("bert.")
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    if key in ("embeddings.position_ids", "embeddings.token_type_ids"):
        return None  # non-persistent buffers in current transformers
    if key.startswith(("embeddings.", "pooler.")):
        return key
    match = _NATIVE_LAYER.match(key)
    if match:
        return f"blocks.{match.group(1)}.layer.{key[match.end():]}"
    return None


class HFEncoder(ModelFamily):
    """BERT-style text encoders from transformers: token, position and segment embeddings, post-norm
    encoder layers, the pooler (first token, dense, tanh), dropout and a linear head."""

    name = "hf-encoder"
    lora_targets = ("query", "value")
    trainable_modules = ("head",)
    head_prefix = "head."

    def parse_name(self, name: str) -> str | None:  # noqa: D102
        return parse_reference(name)

    def owns(self, model: nn.Module) -> bool:  # noqa: D102
        return isinstance(model, HFEncoderClassifier)

    def create(self, kwargs: dict[str, Any], num_classes: int, registry_name: str | None = None) -> nn.Module:  # noqa: D102
        return HFEncoderClassifier(load_config(registry_name, kwargs), num_classes)

    def embed(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embed token ids ``x`` (N, T); return (hidden states, the attention mask transformers builds
        from ``x != pad_token_id`` for the model's attention implementation, None when it needs none)."""
        from transformers.masking_utils import create_bidirectional_mask

        positions = torch.arange(x.shape[1], device=x.device).unsqueeze(0)  # BertEmbeddings' own defaults
        hidden = model.embeddings(input_ids=x, token_type_ids=torch.zeros_like(x), position_ids=positions)
        pad = model.hf_config.pad_token_id
        padding = (x != pad).long() if pad is not None else None
        mask = create_bidirectional_mask(config=model.hf_config, inputs_embeds=hidden, attention_mask=padding)
        return hidden, mask

    def pool(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """The pooler: first token, dense, tanh."""
        return model.pooler(tokens)

    def tokens_of(self, hidden: Any) -> torch.Tensor:
        """Return the token states (N, T, width) of the value passed between blocks (``(states, mask)``)."""
        return hidden[0] if isinstance(hidden, tuple) else hidden

    def head(self, model: nn.Module, tokens: Any) -> torch.Tensor:
        """Pooler, classifier dropout and head on the last block's ``(hidden states, mask)``."""
        return model.head(model.dropout(self.pool(model, self.tokens_of(tokens))))

    def width(self, model: nn.Module) -> int:  # noqa: D102
        return int(model.hf_config.hidden_size)

    def input_size(self, model: nn.Module) -> int:  # noqa: D102
        return 0

    def recipe(self, registry_name: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """``hf_class`` and ``hf_model_type``; ``hf_checkpoint``, the folder to load with
        ``from_pretrained(folder, num_labels=num_classes, dtype=torch.float32, **model_kwargs)`` (None for a
        config built from ``model_kwargs``: then ``BertConfig.from_dict(hf_config)`` and the weights file,
        keys mapped by :meth:`native_key`); ``hf_config``, the full resolved config; ``hf_dtype`` (the
        weights file is float32 whatever the checkpoint's dtype); ``transformers_version``."""
        import transformers

        config = load_config(registry_name, kwargs)
        folder = str(Path(registry_name).expanduser().resolve()) if registry_name is not None else None
        return {
            "hf_class": "BertForSequenceClassification",
            "hf_model_type": config.model_type,
            "hf_checkpoint": folder,
            "hf_config": json.loads(config.to_json_string(use_diff=False)),
            "hf_dtype": "float32",
            "transformers_version": transformers.__version__,
        }

    def native_key(self, key: str) -> str:
        """``blocks.{j}.layer.X`` -> ``bert.encoder.layer.{j}.X``, ``embeddings.`` / ``pooler.`` -> ``bert.``
        plus the same, ``head`` -> ``classifier`` (``BertForSequenceClassification`` names)."""
        match = _BLOCK.match(key)
        if match:
            return f"bert.encoder.layer.{match.group(1)}{key[match.end():]}"
        for module in ("embeddings", "pooler"):
            if key == module or key.startswith(module + "."):
                return "bert." + key
        if key == "head" or key.startswith("head."):
            return "classifier" + key[len("head"):]
        return key

    def local_weights(self, reference: str | None) -> Path | None:
        """Convert the folder's ``model.safetensors`` (or its shards) to one file of canonical float32
        keys in ``cache_dir()/backbones``, once per source file version (path, size, mtime); return it."""
        return converted_weights(reference, HF_PREFIX, "hf", _CONVERT_VERSION, _convert)


def _convert(folder: Path, shards: list[Path], out: Path) -> None:
    tensors, digest = read_renamed(shards, canonical_from_native)
    if not any(k.startswith("pooler.") for k in tensors):
        raise ValueError(
            f"backbone 'hf:{folder}': the checkpoint has no pooler (bert.pooler.dense.*); BertForSequenceClassification "
            "would initialise it at random, so this family cannot reproduce it"
        )
    if not any(k.startswith("blocks.") for k in tensors):
        raise ValueError(f"backbone 'hf:{folder}': no encoder layer (bert.encoder.layer.*) in model.safetensors")
    save_canonical(tensors, out, folder, digest)
