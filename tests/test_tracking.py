"""Experiment tracking (run config key ``tracking``): real tiny runs through the apps with
TensorBoard and MLflow, read back with TensorBoard's EventAccumulator and MLflow's client and
compared with ``metrics.jsonl`` read here on its own; resumption appends; ``none`` writes nothing;
a missing package is one line before any training; a tracker that fails never stops the run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from fedra_core.run_config import ConfigError, RunConfig, load_run_config
from runners.local import run_local
from server_app import tracking
from server_app.outputs import read_metrics

REPO = Path(__file__).resolve().parent.parent
TINY = {k: v for k, v in json.loads((REPO / "tests" / "data" / "refactor_baseline.json").read_text())["fedra/vit"]["config"].items()
        if k != "depthfl-ramp-rounds"}  # a DepthFL knob: refused for FedRA
NUM_NODES = 3


def _run(tmp_path: Path, intercept=None, **overrides) -> Path:
    return run_local({**TINY, "num-server-rounds": 2, "output-dir": str(tmp_path), "run-name": "r", **overrides},
                     NUM_NODES, intercept)


def _records(run_dir: Path) -> list[dict]:
    return read_metrics(run_dir)


def _expected(records: list[dict]) -> dict[tuple[str, int], float]:
    """What a tracker must have logged, worked out here from the records by hand: (name, round) -> value."""
    out: dict[tuple[str, int], float] = {}
    for r in records:
        step = r["round"]
        row = {}
        if "accuracy" in r:
            domains = sorted(r["accuracy"])
            row.update({"accuracy/" + d: r["accuracy"][d] for d in domains})
            row.update({"loss/" + d: r["loss"][d] for d in domains})
            row["average/accuracy"] = r["average"]
            total = float(np.sum([r["examples"][d] for d in domains]))
            row["average/loss"] = float(np.dot([r["loss"][d] for d in domains], [r["examples"][d] for d in domains])) / total
        if step > 0:
            row["seconds"] = r["seconds"]
            row["train-loss"] = r["train-loss"]
            for direction in ("sent", "received"):
                row.update({f"bytes-{direction}/node-{n}": b for n, b in r[f"bytes-{direction}"].items()})
            counts = np.array(r["allocation"]).sum(axis=0)
            row.update({"holders/block-%02d" % j: int(c) for j, c in enumerate(counts)})
        out.update({(name, step): float(value) for name, value in row.items()})
    return out


def _tensorboard_scalars(run_dir: Path) -> dict[tuple[str, int], float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}


def _mlflow_runs(run_dir: Path) -> tuple[object, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{(run_dir / 'mlruns' / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("fedra")
    return client, client.search_runs([experiment.experiment_id])


def _events(run_dir: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))}


# --- config and units (no run) ----------------------------------------------------------------
def test_bad_tracking_value_is_one_line_naming_key_value_and_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_run_config({"tracking": "wandb"})
    assert str(info.value) == "config key 'tracking' = 'wandb': Input should be 'none', 'tensorboard' or 'mlflow'"


def test_registry_is_the_config_choices() -> None:
    assert list(tracking.TRACKERS) == list(get_args(RunConfig.model_fields["tracking"].annotation))
    assert RunConfig().tracking == "none"


def test_scalars_of_a_hand_written_record() -> None:
    record = {
        "round": 3, "seconds": 2.5, "accuracy": {"a b(1)": 0.5, "c": 1.0}, "average": 0.6,
        "loss": {"a b(1)": 2.0, "c": 1.0}, "examples": {"a b(1)": 40, "c": 10},
        "server-accuracy": {"c": 0.25}, "server-average": 0.25, "train-loss": None,
        "bytes-sent": {"7": 100}, "bytes-received": {}, "allocation": [[1, 0, 1], [1, 1, 0]],
        "epsilon": {"node-7": 1.5, "note": "x"},
    }
    assert tracking.round_scalars(record) == {
        "accuracy/a b_1_": 0.5, "accuracy/c": 1.0, "loss/a b_1_": 2.0, "loss/c": 1.0,
        "server-accuracy/c": 0.25, "average/accuracy": 0.6, "average/loss": (2.0 * 40 + 1.0 * 10) / 50,
        "server-average": 0.25, "bytes-sent/node-7": 100.0,
        "holders/block-0": 2.0, "holders/block-1": 1.0, "holders/block-2": 1.0, "seconds": 2.5, "epsilon/node-7": 1.5,
    }
    assert tracking.round_scalars({"round": 4, "seconds": 1.0, "epsilon": 0.75}) == {"seconds": 1.0, "epsilon": 0.75}
    assert tracking.round_scalars({"round": 0, "seconds": 0.0, "epsilon": True}) == {}


class _Broken(tracking.Tracker):
    """Fails in log_round and in close."""

    closes = 0

    def log_round(self, record) -> None:
        raise OSError("disk full")

    def close(self, failed: bool = False) -> None:
        type(self).closes += 1
        raise OSError("cannot close")


@pytest.fixture()
def fedra_log(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """The records of the "fedra" logger, each once (a run's set-up stops it propagating to the root)."""
    logger = logging.getLogger("fedra")
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def test_guard_warns_once_and_stops(fedra_log) -> None:
    guarded = tracking.GuardedTracker(_Broken(), "broken")
    for r in range(3):
        guarded.log_round({"round": r, "seconds": 1.0})
    guarded.close()
    warnings = [rec.getMessage() for rec in fedra_log.records if rec.levelno == logging.WARNING]
    assert warnings == ["tracking 'broken' stopped (logging round 0: OSError: disk full); the run goes on, metrics.jsonl has every round"]
    assert _Broken.closes == 1
    guarded = tracking.GuardedTracker(_Broken(), "broken")
    guarded.close()  # an error on close only: a warning, no exception
    assert "closing: OSError: cannot close" in fedra_log.records[-1].getMessage()


def test_none_writes_nothing(tmp_path: Path) -> None:
    tracker = tracking.open_tracker("none", tmp_path, 0)
    tracker.log_round({"round": 0, "seconds": 0.0, "accuracy": {"a": 1.0}, "average": 1.0})
    tracker.close()
    assert isinstance(tracker, tracking.NullTracker) and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "module"), [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_missing_package_is_one_line_before_any_training(name: str, module: str, tmp_path: Path) -> None:
    argv = ["--num-nodes", "1", "--run-config", f"tracking='{name}' output-dir='{tmp_path}' run-name='r'"]
    code = f"import sys; sys.modules[{module!r}] = None; from runners.local import main; raise SystemExit(main({argv!r}))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().splitlines() == [
        f"error: config key 'tracking' = '{name}' needs the {module} package: pip install 'fedra[{name}]'"
    ]
    assert "round" not in run.stdout and not (tmp_path / "r").exists()


# --- real runs -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_tensorboard_logs_every_round_and_resume_appends(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, tracking="tensorboard")
    assert not (run_dir / "mlruns").exists()
    assert [r["round"] for r in _records(run_dir)] == [0, 1, 2]
    assert _tensorboard_scalars(run_dir) == {k: float(np.float32(v)) for k, v in _expected(_records(run_dir)).items()}
    before = _events(run_dir)
    assert len(before) == 1

    _run(tmp_path, tracking="tensorboard", resume=True, **{"num-server-rounds": 3})
    after = _events(run_dir)
    assert len(after) == 2 and {p: after[p] for p in before} == before  # a new file; the first one untouched
    records = _records(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert _tensorboard_scalars(run_dir) == {k: float(np.float32(v)) for k, v in _expected(records).items()}


@pytest.mark.slow
def test_mlflow_logs_every_round_and_resume_continues_the_same_run(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, tracking="mlflow")
    assert not (run_dir / "tensorboard").exists()
    _run(tmp_path, tracking="mlflow", resume=True, **{"num-server-rounds": 3})
    client, runs = _mlflow_runs(run_dir)
    assert len(runs) == 1 and runs[0].info.run_name == "r" and runs[0].info.status == "FINISHED"
    logged = {(key, m.step): m.value for key in runs[0].data.metrics for m in client.get_metric_history(runs[0].info.run_id, key)}
    expected = _expected(_records(run_dir))
    assert {k for k, _ in expected} >= {"average/accuracy", "holders/block-11", "bytes-received/node-1002"}
    assert logged == pytest.approx(expected, rel=1e-12)
    assert {s for _, s in expected} == {0, 1, 2, 3}


@pytest.mark.slow
def test_none_writes_neither_folder(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, **{"num-server-rounds": 1, "eval-every": 0})
    assert json.loads((run_dir / "config.json").read_text())["tracking"] == "none"
    assert not (run_dir / "tensorboard").exists() and not (run_dir / "mlruns").exists()


class _FailsAtRoundOne(tracking.TensorBoardTracker):
    """The real TensorBoard tracker, which raises once round 1 is written."""

    rounds: list[int] = []
    closed: list[bool] = []

    def log_round(self, record) -> None:
        super().log_round(record)
        type(self).rounds.append(record["round"])
        if record["round"] == 1:
            raise OSError("disk full")

    def close(self, failed: bool = False) -> None:
        type(self).closed.append(failed)
        super().close(failed)


@pytest.mark.slow
def test_tracker_failing_mid_run_does_not_stop_it(tmp_path: Path, monkeypatch, fedra_log) -> None:
    monkeypatch.setitem(tracking.TRACKERS, "tensorboard", _FailsAtRoundOne)
    monkeypatch.setattr(_FailsAtRoundOne, "rounds", [])
    monkeypatch.setattr(_FailsAtRoundOne, "closed", [])
    run_dir = _run(tmp_path, tracking="tensorboard", **{"eval-every": 0})
    assert [r["round"] for r in _records(run_dir)] == [0, 1, 2] and (run_dir / "adapter").is_dir()
    assert _FailsAtRoundOne.rounds == [0, 1] and _FailsAtRoundOne.closed == [True]
    warnings = [rec.getMessage() for rec in fedra_log.records if rec.levelno == logging.WARNING and "tracking" in rec.getMessage()]
    assert len(warnings) == 1 and "logging round 1: OSError: disk full" in warnings[0]
    assert {s for _, s in _tensorboard_scalars(run_dir)} == {1}  # round 0 has no scalar without evaluation


@pytest.mark.slow
def test_tracker_is_closed_when_the_run_raises(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(tracking.TRACKERS, "tensorboard", _FailsAtRoundOne)
    monkeypatch.setattr(_FailsAtRoundOne, "rounds", [])
    monkeypatch.setattr(_FailsAtRoundOne, "closed", [])

    def crash(node_id, message, reply):
        if message.metadata.message_type.startswith("train"):
            raise KeyboardInterrupt
        return reply

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, crash, tracking="tensorboard", **{"num-server-rounds": 1})
    assert _FailsAtRoundOne.rounds == [0] and _FailsAtRoundOne.closed == [True]
    assert {s for _, s in _tensorboard_scalars(tmp_path / "r")} == {0}
