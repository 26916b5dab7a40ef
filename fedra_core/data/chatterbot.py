"""The ``chatterbot`` dataset: English question/answer pairs of the ``chatterbot-corpus`` package (BSD), one topic a domain.

The package (``pip install chatterbot-corpus==1.3.3``; its module is never imported, only located)
ships ``chatterbot_corpus/data/english/<topic>.yml``: 21 topic files of ``conversations``, each a list
of turns. Turns 2i and 2i + 1 of a conversation make a (prompt, response) pair; repeated pairs are kept once (1,044 distinct
pairs: tech_support's 1,050 conversations repeat 10 pairs, coding repeats half of its 184; most
conversations are one question and its answer). Each topic's pairs are shuffled with the run's seed
and the topic's name, and the last ``TEST_FRACTION`` of them (at least one) is its held-out test split.
The pairs are tokenised with the run's backbone's chat template (:mod:`fedra_core.data.text`).
"""

from __future__ import annotations

import importlib.util
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from fedra_core.data.federation import DataSpec

PACKAGE = "chatterbot_corpus"
TEST_FRACTION = 0.2
CHATTERBOT_DOMAINS: tuple[str, ...] = (
    "ai", "botprofile", "coding", "computers", "conversations", "emotion", "food", "gossip", "greetings", "health",
    "history", "humor", "literature", "money", "movies", "politics", "psychology", "science", "sports", "tech_support",
    "trivia",
)


def corpus_folder() -> Path:
    """Return the package's English topic folder without importing the package; ValueError with the install command."""
    spec = importlib.util.find_spec(PACKAGE)
    for location in list(spec.submodule_search_locations or []) if spec is not None else []:
        folder = Path(location) / "data" / "english"
        if folder.is_dir():
            return folder
    raise ValueError("dataset 'chatterbot' needs the chatterbot-corpus package: pip install chatterbot-corpus==1.3.3")


@lru_cache(maxsize=32)
def topic_pairs(domain: str) -> tuple[tuple[str, str], ...]:
    """Return every distinct (prompt, response) pair of one English topic, in file order."""
    import yaml

    if domain not in CHATTERBOT_DOMAINS:
        raise ValueError(f"unknown chatterbot topic {domain!r}: allowed {list(CHATTERBOT_DOMAINS)}")
    data = yaml.safe_load((corpus_folder() / f"{domain}.yml").read_text(encoding="utf-8"))
    pairs = []
    for turns in data.get("conversations", []):
        for i in range(0, len(turns) - 1, 2):
            pairs.append((str(turns[i]).strip(), str(turns[i + 1]).strip()))
    return tuple(dict.fromkeys(p for p in pairs if p[0] and p[1]))  # a repeated pair once: else it could sit in both splits


def split_pairs(domain: str, split: str, seed: int) -> list[tuple[str, str]]:
    """Return a topic's ``train`` or ``test`` pairs: shuffled with (seed, topic), the last ``TEST_FRACTION`` held out."""
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r}: allowed 'train', 'test'")
    pairs = topic_pairs(domain)
    order = np.random.default_rng([seed, zlib.crc32(domain.encode())]).permutation(len(pairs))
    n_test = max(1, round(TEST_FRACTION * len(pairs)))
    chosen = order[len(pairs) - n_test:] if split == "test" else order[: len(pairs) - n_test]
    return [pairs[i] for i in sorted(chosen)]


def chatterbot_split(spec: DataSpec, domain: str, split: str) -> Dataset:
    """Return one topic's split, tokenised with the run's tokenizer (``spec.tokenizer``)."""
    from fedra_core.data.text import encode_pairs, load_tokenizer

    return encode_pairs(split_pairs(domain, split, spec.seed), load_tokenizer(spec.tokenizer), f"chatterbot topic {domain!r} {split}")
