"""Shared by the causal-LM tests: the real SmolLM2-135M backbone (converted once into the tests' cache),
tiny seeded Llama configs, and text-jsonl folders."""

from __future__ import annotations

import json
from pathlib import Path

TINY_LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True, pad_token_id=0)

PAIRS = {
    "cooking": [("How long do I boil an egg?", "About nine minutes for a hard-boiled egg."),
                ("What is a roux?", "Flour cooked in fat, used to thicken sauces."),
                ("Why rest dough?", "Resting lets the gluten relax so the dough is easier to roll."),
                ("What does blanching mean?", "Briefly boiling food, then cooling it in ice water.")],
    "astronomy": [("What is a light year?", "The distance light travels in one year."),
                  ("Which planet is largest?", "Jupiter is the largest planet in the solar system."),
                  ("What is a comet made of?", "Mostly ice, dust and rock."),
                  ("Why does the Moon have phases?", "We see different parts of its sunlit half as it orbits Earth.")],
}


def write_jsonl(path: Path, pairs: list[tuple[str, str]]) -> Path:
    """Write ``pairs`` as one {"prompt", "response"} object a line; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in pairs), encoding="utf-8")
    return path


def text_node(root: Path, topic: str) -> Path:
    """A text-jsonl node folder: the topic's first three pairs to train on, the last one (and the first) to test."""
    pairs = PAIRS[topic]
    write_jsonl(root / "train.jsonl", pairs[:3])
    write_jsonl(root / "test.jsonl", [pairs[3], pairs[0]])
    return root
