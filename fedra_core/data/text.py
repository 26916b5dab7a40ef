"""Prompt/response text for causal language models: tokenised with the backbone's chat template, loss on
the response tokens only.

A pair becomes ``apply_chat_template([user: prompt, assistant: response])``; the tokens of
``apply_chat_template([user: prompt], add_generation_prompt=True)`` (system line, user turn,
assistant header) are its prompt part and take no loss (label ``-100``), every later token (the
response, its end-of-turn token and the template's line break) is a label. Sequences are cut at
``MAX_TOKENS`` (a pair whose response is cut away entirely is dropped; both are said in one logged
line) and right-padded with the tokenizer's pad token to the longest sequence of the split (padding
takes no loss and, under the causal mask, no real token sees it).

Sources: the node-local format ``text-jsonl`` (``data-root/train.jsonl`` and optionally
``data-root/test.jsonl``, one ``{"prompt": ..., "response": ...}`` object per line) and the
``chatterbot`` dataset (:mod:`fedra_core.data.chatterbot`). The tokenizer is the run's backbone's
(:attr:`fedra_core.data.federation.DataSpec.tokenizer`, a transformers folder).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fedra_core.data.federation import DataSpec
from fedra_core.data.node_data import LabelSpace, NodeData, NodeDataError, NodeDataSpec

MAX_TOKENS = 256  # longest tokenised pair (prompt template + response); longer ones are cut
IGNORE = -100
KEYS = ("prompt", "response")
log = logging.getLogger("fedra")

Pair = tuple[str, str]


class TextDataset(Dataset):
    """Tokenised prompt/response pairs: ``input_ids`` (N, T) right-padded, ``label_ids`` (N, T) with ``-100``
    outside the responses, and the ``pairs`` themselves. ``targets`` (all 0) stands for class labels
    where the engine samples or checks them: text has none, so a sample is a plain seeded draw."""

    def __init__(self, input_ids: torch.Tensor, labels: torch.Tensor, pairs: Sequence[Pair]) -> None:
        self.input_ids, self.label_ids, self.pairs = input_ids, labels, list(pairs)
        self.targets = np.zeros(len(self.pairs), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.input_ids[index], self.label_ids[index]


@lru_cache(maxsize=4)
def load_tokenizer(folder: str) -> Any:
    """Return the tokenizer of a transformers folder (cached per process); ValueError naming the folder."""
    from transformers import AutoTokenizer

    if not folder:
        raise ValueError("text data needs the backbone's tokenizer: use a causal-LM backbone (e.g. backbone = 'smollm2-135m')")
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load the tokenizer of {folder} ({exc.__class__.__name__})") from None
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer of {folder} has no chat template (prompt/response text needs one)")
    return tokenizer


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Return the token ids of ``prompt`` as a user turn followed by the assistant header (what generation starts from)."""
    return list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True, return_dict=False))


def encode_pairs(pairs: Sequence[Pair], tokenizer: Any, where: str, max_tokens: int = MAX_TOKENS) -> TextDataset:
    """Tokenise ``pairs`` with the chat template; labels only on the response tokens.

    Sequences longer than ``max_tokens`` are cut, pairs left without a response token dropped; one
    warning line (prefixed by ``where``) says how many of each."""
    rows: list[tuple[list[int], int]] = []
    kept: list[Pair] = []
    cut = dropped = 0
    for prompt, response in pairs:
        head = prompt_ids(tokenizer, prompt)
        full = list(tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=True, return_dict=False
        ))
        if full[: len(head)] != head:
            raise ValueError(f"{where}: the chat template does not extend the prompt's tokens with the response's")
        if len(full) > max_tokens:
            cut += 1
            full = full[:max_tokens]
        if len(full) <= len(head):
            dropped += 1
            continue
        rows.append((full, len(head)))
        kept.append((prompt, response))
    if cut:
        log.warning("%s: %d of %d pairs exceed %d tokens and were cut%s", where, cut, len(pairs), max_tokens,
                    f" ({dropped} left without a response token were dropped)" if dropped else "")
    width = max((len(ids) for ids, _ in rows), default=1)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    input_ids = torch.full((len(rows), width), int(pad), dtype=torch.int64)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.int64)
    for i, (ids, start) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, start : len(ids)] = torch.tensor(ids[start:])
    return TextDataset(input_ids, labels, kept)


def read_jsonl(path: Path, where: str) -> list[Pair]:
    """Return the (prompt, response) pairs of a JSON-lines file; NodeDataError (one line, prefixed by
    ``where``) for a file that is not UTF-8, a line that is not a JSON object with string ``prompt``
    and ``response``, or a file without any pair. Blank lines are skipped."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise NodeDataError(f"{where}: {path.name} is not UTF-8 (line {line}, byte {exc.start})") from None
    except OSError as exc:
        raise NodeDataError(f"{where}: cannot read {path.name} ({exc.__class__.__name__})") from None
    pairs: list[Pair] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise NodeDataError(f"{where}: {path.name} line {number} is not JSON (expected one object {{\"prompt\": ..., \"response\": ...}} a line)") from None
        if not isinstance(row, dict):
            raise NodeDataError(f"{where}: {path.name} line {number} is a {type(row).__name__}, expected an object with 'prompt' and 'response'")
        for key in KEYS:
            if key not in row:
                raise NodeDataError(f"{where}: {path.name} line {number} lacks {key!r} (has {sorted(row)[:5]}; expected 'prompt' and 'response')")
            if not isinstance(row[key], str) or not row[key].strip():
                raise NodeDataError(f"{where}: {path.name} line {number}: {key!r} must be a non-empty string, got {json.dumps(row[key])[:40]}")
        pairs.append((row["prompt"], row["response"]))
    if not pairs:
        raise NodeDataError(f"{where}: {path.name} holds no prompt/response pair (one JSON object a line)")
    return pairs


def load_text_jsonl(spec: NodeDataSpec, run: DataSpec, labels: LabelSpace, img_size: int) -> NodeData:
    """Format ``text-jsonl``: the node's own ``data-root/train.jsonl`` (and ``test.jsonl``), tokenised with the run's tokenizer."""
    root = Path(spec.root).expanduser()
    where = f"node-config 'data-root' = '{root}'"
    expected = "train.jsonl and optionally test.jsonl, one {\"prompt\": ..., \"response\": ...} object a line"
    if not root.is_dir():
        raise NodeDataError(f"{where}: no such folder (expected {expected})")
    if not (root / "train.jsonl").is_file():
        raise NodeDataError(f"{where}: no train.jsonl (expected {expected})")
    try:
        tokenizer = load_tokenizer(run.tokenizer)
    except ValueError as exc:
        raise NodeDataError(f"{where}: {exc}") from None
    train = encode_pairs(read_jsonl(root / "train.jsonl", where), tokenizer, f"{where} train.jsonl")
    test_file = root / "test.jsonl"
    test = encode_pairs(read_jsonl(test_file, where), tokenizer, f"{where} test.jsonl") if test_file.is_file() else encode_pairs([], tokenizer, where)
    return NodeData(spec.domain or root.name, train, test, "")
