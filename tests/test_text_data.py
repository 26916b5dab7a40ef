"""Text on the nodes: the text-jsonl format (chat template, loss on response tokens only, one-line
refusals of bad files) and the chatterbot dataset, with the real SmolLM2 tokenizer."""

from __future__ import annotations

import logging

import pytest
import torch

from causal_lm_helpers import PAIRS, text_node, write_jsonl
from fedra_core.backbones import BackboneSpec
from fedra_core.data.chatterbot import CHATTERBOT_DOMAINS, corpus_folder, split_pairs, topic_pairs
from fedra_core.data.federation import DataSpec
from fedra_core.data.node_data import LabelSpace, NodeDataError, NodeDataSpec, load_node_data
from fedra_core.data.text import IGNORE, encode_pairs, load_tokenizer, prompt_ids


@pytest.fixture(scope="module")
def tokenizer_folder() -> str:
    return BackboneSpec(name="smollm2-135m").constructor()[0]


def _load(root, tokenizer_folder, domain: str = ""):
    return load_node_data(NodeDataSpec("text-jsonl", str(root), domain), DataSpec(tokenizer=tokenizer_folder), LabelSpace(1), 0)


def test_labels_are_exactly_the_response_tokens(tmp_path, tokenizer_folder):
    data = _load(text_node(tmp_path / "cooking", "cooking"), tokenizer_folder)
    tok = load_tokenizer(tokenizer_folder)
    assert data.domain == "cooking" and len(data.train) == 3 and len(data.test) == 2
    for i, (prompt, response) in enumerate(PAIRS["cooking"][:3]):
        ids, labels = data.train[i]
        start = len(prompt_ids(tok, prompt))
        assert (labels[:start] == IGNORE).all()
        labelled = labels[labels != IGNORE]
        assert tok.decode(labelled) == response + "<|im_end|>\n"  # the response, its end of turn, the template's line break
        assert tok.decode(ids[: start + len(labelled)]) == tok.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)
        assert (ids[start + len(labelled):] == tok.pad_token_id).all()  # right padding, no loss


def test_over_long_pairs_are_cut_and_said(tokenizer_folder, caplog):
    tok = load_tokenizer(tokenizer_folder)
    short, long_ = ("Hi?", "Hello."), ("Tell me everything.", "word " * 400)
    head = len(prompt_ids(tok, "x " * 300))
    with caplog.at_level(logging.WARNING, logger="fedra"):
        data = encode_pairs([short, long_, ("x " * 300, "gone")], tok, "node X", max_tokens=64)
    assert head > 64 and len(data) == 2 and data.input_ids.shape[1] == 64
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["node X: 2 of 3 pairs exceed 64 tokens and were cut (1 left without a response token were dropped)"]


@pytest.mark.parametrize("content, message", [
    (b"", "holds no prompt/response pair"),
    (b"\n  \n", "holds no prompt/response pair"),
    (b'{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n', "line 2 lacks 'response'"),
    (b'{"prompt": "a", "answer": "b"}\n', "line 1 lacks 'response'"),
    (b'{"prompt": "a", "response": 3}\n', "line 1: 'response' must be a non-empty string"),
    (b'{"prompt": "a", "response": ""}\n', "line 1: 'response' must be a non-empty string"),
    (b'["a", "b"]\n', "line 1 is a list"),
    (b'{"prompt": "a", "response": "b"}\nnot json\n', "line 2 is not JSON"),
    (b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "b"}\n', "train.jsonl is not UTF-8 \\(line 2"),
])
def test_bad_files_are_refused_in_one_line(tmp_path, tokenizer_folder, content, message):
    root = tmp_path / "node"
    root.mkdir()
    (root / "train.jsonl").write_bytes(content)
    with pytest.raises(NodeDataError, match=message) as info:
        _load(root, tokenizer_folder)
    assert "\n" not in str(info.value) and str(info.value).startswith(f"node-config 'data-root' = '{root}'")


def test_missing_folder_file_or_tokenizer(tmp_path, tokenizer_folder):
    with pytest.raises(NodeDataError, match="no such folder"):
        _load(tmp_path / "nowhere", tokenizer_folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NodeDataError, match="no train.jsonl"):
        _load(tmp_path / "empty", tokenizer_folder)
    root = text_node(tmp_path / "a", "astronomy")
    with pytest.raises(NodeDataError, match="use a causal-LM backbone"):
        _load(root, "")
    write_jsonl(root / "test.jsonl", [("q", "r")])
    (root / "test.jsonl").write_text('{"prompt": 1}\n')
    with pytest.raises(NodeDataError, match="test.jsonl line 1 lacks 'response'|'prompt' must be"):
        _load(root, tokenizer_folder)


def test_chatterbot_topics_splits_and_tokens(tokenizer_folder):
    assert sorted(p.stem for p in corpus_folder().glob("*.yml")) == sorted(CHATTERBOT_DOMAINS)
    import yaml

    by_hand = 0
    for path in corpus_folder().glob("*.yml"):
        distinct = set()
        for turns in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            distinct |= {(str(turns[i]).strip(), str(turns[i + 1]).strip()) for i in range(0, len(turns) - 1, 2)}
        by_hand += len({p for p in distinct if p[0] and p[1]})
    assert sum(len(topic_pairs(d)) for d in CHATTERBOT_DOMAINS) == by_hand
    for domain in ("ai", "coding", "health"):
        train, test = split_pairs(domain, "train", 0), split_pairs(domain, "test", 0)
        assert not set(train) & set(test) and len(train) + len(test) == len(topic_pairs(domain)) and test
        assert split_pairs(domain, "test", 0) == test and split_pairs(domain, "test", 1) != test or len(test) == 1
    spec = DataSpec(dataset="chatterbot", domains=("ai",), tokenizer=tokenizer_folder)
    node = load_node_data(NodeDataSpec("chatterbot", domain="ai"), spec, LabelSpace(1), 0)
    assert len(node.train) == len(split_pairs("ai", "train", 0)) and node.test.pairs == split_pairs("ai", "test", 0)
    ids, labels = node.test[0]
    assert ids.dtype == labels.dtype == torch.int64 and (labels != IGNORE).any()
    with pytest.raises(NodeDataError, match="unknown chatterbot topic 'cooking'"):
        load_node_data(NodeDataSpec("chatterbot", domain="cooking"), spec, LabelSpace(1), 0)
