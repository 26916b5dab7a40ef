"""The method and model-family seams changed no result: every method's 3-round run through the apps
gives the per-domain accuracies, training losses and allocations recorded before the refactor
(``tests/data/refactor_baseline.json``, written by the code of commit 19b82cb)."""

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
    run_dir = run_local({**expected["config"], "output-dir": str(tmp_path), "run-name": "r"}, 3)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("allocation") for r in records] == expected["allocation"]
    assert [r["accuracy"] for r in records] == expected["accuracy"]
    assert [r.get("train-loss") for r in records] == expected["train-loss"]
