"""The method and model-family seams changed no result: every method's 3-round run through the apps
gives the per-domain accuracies, training losses and allocations recorded before the refactor
(``tests/data/refactor_baseline.json``, written by the code of commit 19b82cb).

The recording predates the reference-code defaults, so the runs pass the settings of the time:
LoRA on ``attn.proj`` and ``mlp.fc2`` only (ViT) and a trained final norm. The recorded accuracies
are no longer compared: they were measured on each node's first ``eval-max-examples`` test images,
and that limit now draws a seeded class-stratified sample (issue 21); the training path (allocations,
losses) is what a refactor must leave alone, and evaluation is checked against a plain forward pass
elsewhere (tests/test_federated_eval.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.local import run_local

RECORDED = json.loads((Path(__file__).parent / "data" / "refactor_baseline.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(RECORDED))
def test_same_results_as_before_the_refactor(case, tmp_path):
    expected = RECORDED[case]
    before = {"train-norm": True, **({"lora-targets": "attn.proj,mlp.fc2"} if case.endswith("/vit") else {})}
    run_dir = run_local({**expected["config"], **before, "output-dir": str(tmp_path), "run-name": "r"}, 3)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("allocation") for r in records] == expected["allocation"]
    # to float32 summation order: on this machine's current wheels the last digits moved (also at 09a49b5)
    assert [r.get("train-loss") for r in records] == [x if x is None else pytest.approx(x, rel=1e-6) for x in expected["train-loss"]]
