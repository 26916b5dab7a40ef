"""Experiment tracking (run config key ``tracking``): every round's record of ``metrics.jsonl`` also
goes to TensorBoard event files (``<run folder>/tensorboard/``) or to a local MLflow store
(``<run folder>/mlruns/mlflow.db``), keyed by server round. Opt-in, offline and never fatal: a
tracker that fails is reported once and stops; the run goes on."""

from __future__ import annotations

import importlib
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedra_core.run_config import ConfigError

log = logging.getLogger("fedra")
MLFLOW_EXPERIMENT = "fedra"
_UNSAFE = re.compile(r"[^\w.\- ]")  # what MLflow allows in a metric name, less "/" (the separator) and ":"


def _tag(*parts: object) -> str:
    """One metric name from its parts, each stripped of characters MLflow or TensorBoard refuse."""
    return "/".join(_UNSAFE.sub("_", str(p)) for p in parts)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def round_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """Return the scalars a tracker logs for one ``metrics.jsonl`` record: per-domain ``accuracy/<d>``
    and ``loss/<d>`` (and a causal LM's ``perplexity/<d>``), ``average/accuracy`` (the record's
    example-weighted ``average``) and ``average/loss`` (the per-domain losses weighted by their
    examples, or by their response tokens for a causal LM), ``server-accuracy/<d>`` and
    ``server-average``, ``train-loss``, ``bytes-sent/node-<id>`` and ``bytes-received/node-<id>``,
    ``holders/block-<j>`` (how many clients held block j this round), ``seconds`` (round time) and
    ``epsilon`` (or ``epsilon/<key>`` for a mapping) when the record has a numeric one."""
    out: dict[str, float] = {}
    for key in ("accuracy", "loss", "perplexity", "server-accuracy"):
        for domain, value in (record.get(key) or {}).items():
            out[_tag(key, domain)] = float(value)
    if "average" in record:
        out["average/accuracy"] = float(record["average"])
    # a causal LM's losses are per response token: weighted by the tokens (``targets``), else by the examples
    losses, examples = record.get("loss") or {}, record.get("targets") or record.get("examples") or {}
    if losses and set(losses) <= set(examples) and sum(examples[d] for d in losses) > 0:
        out["average/loss"] = sum(losses[d] * examples[d] for d in losses) / sum(examples[d] for d in losses)
    if "server-average" in record:
        out["server-average"] = float(record["server-average"])
    if record.get("train-loss") is not None:
        out["train-loss"] = float(record["train-loss"])
    for key in ("bytes-sent", "bytes-received"):
        for node, value in (record.get(key) or {}).items():
            out[_tag(key, f"node-{node}")] = float(value)
    rows = record.get("allocation") or []
    if rows:
        width = len(str(len(rows[0]) - 1))
        for j in range(len(rows[0])):
            out[_tag("holders", f"block-{j:0{width}d}")] = float(sum(row[j] for row in rows))
    if record.get("round"):
        out["seconds"] = float(record["seconds"])
    epsilon = record.get("epsilon")
    if _number(epsilon):
        out["epsilon"] = float(epsilon)
    elif isinstance(epsilon, Mapping):
        out.update({_tag("epsilon", k): float(v) for k, v in epsilon.items() if _number(v)})
    return out


class Tracker:
    """Where a run's round records go besides ``metrics.jsonl``; this base class logs nothing.

    ``package`` / ``module``: the pip package a backend needs and the module whose import proves
    it is there (None: nothing to install)."""

    package: str | None = None
    module: str | None = None

    @classmethod
    def import_backend(cls) -> None:
        """Import the backend's module; ImportError when its package is missing."""
        if cls.module is not None:
            importlib.import_module(cls.module)

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Log one round's record (the dict appended to ``metrics.jsonl``)."""

    def close(self, failed: bool = False) -> None:
        """Flush and close; ``failed``: the run ended with an exception."""


class NullTracker(Tracker):
    """``tracking = "none"``: nothing is logged and no file is written."""


class TensorBoardTracker(Tracker):
    """Event files in ``<run folder>/tensorboard/`` (``torch.utils.tensorboard``); a resumed run
    writes a new event file, and TensorBoard hides the earlier file's steps from ``first_round`` on
    (a round logged before a crash and run again). Values are stored as float32."""

    package, module = "tensorboard", "torch.utils.tensorboard"

    def __init__(self, run_dir: Path, first_round: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=first_round or None)

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Add every scalar of the record at step ``round`` and flush the event file."""
        for tag, value in round_scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=int(record["round"]))
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        """Close the event file."""
        self.writer.close()


class MlflowTracker(Tracker):
    """A local MLflow store, ``<run folder>/mlruns/mlflow.db`` (SQLite: MLflow 3 refuses its file
    store by default), with one MLflow run named after the run folder in experiment ``fedra``; a
    resumed run goes on logging into the same MLflow run. No server, no network, no account."""

    package, module = "mlflow", "mlflow"

    @classmethod
    def import_backend(cls) -> None:
        """Import mlflow with its usage telemetry off unless the user set MLFLOW_DISABLE_TELEMETRY
        (a run must not reach the network)."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        importlib.import_module("mlflow")

    def __init__(self, run_dir: Path, first_round: int) -> None:
        self.import_backend()
        from mlflow.tracking import MlflowClient

        store = (run_dir / "mlruns").resolve()
        store.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
        experiment = self.client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        if experiment is None:
            experiment_id = self.client.create_experiment(MLFLOW_EXPERIMENT, artifact_location=(store / "artifacts").as_uri())
        else:
            experiment_id = experiment.experiment_id
        runs = self.client.search_runs([experiment_id], max_results=1, order_by=["attributes.start_time ASC"])
        if runs:
            self.run_id = runs[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Log every scalar of the record at step ``round`` (batches of MLflow's 1000 at most)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, value, now, int(record["round"])) for tag, value in round_scalars(record).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def close(self, failed: bool = False) -> None:
        """Mark the MLflow run FINISHED (FAILED when the run raised)."""
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


# The one list of trackers; RunConfig's ``tracking`` Literal names the same keys (tested).
TRACKERS: dict[str, type[Tracker]] = {"none": NullTracker, "tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}


def require(name: str) -> None:
    """Raise ConfigError (one line) when tracker ``name`` needs a package that is not installed."""
    tracker = TRACKERS[name]
    try:
        tracker.import_backend()
    except ImportError as exc:
        cause = "" if exc.name == tracker.package else f" ({type(exc).__name__}: {exc})"
        raise ConfigError(
            f"config key 'tracking' = {name!r} needs the {tracker.package} package: pip install 'fedra[{name}]'{cause}"
        ) from None


class GuardedTracker(Tracker):
    """Runs another tracker so that it cannot break the run: its first error is logged as one
    warning and tracking stops (``metrics.jsonl`` still has every round)."""

    def __init__(self, inner: Tracker, name: str) -> None:
        self.inner: Tracker | None = inner
        self.name = name

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Pass the record on; on an error warn once and stop tracking."""
        if self.inner is None:
            return
        try:
            self.inner.log_round(record)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a run
            inner, self.inner = self.inner, None
            _warn(self.name, f"logging round {record.get('round')}", exc)
            try:
                inner.close(failed=True)
            except Exception:  # noqa: BLE001 - already reported
                pass

    def close(self, failed: bool = False) -> None:
        """Close the tracker once; an error while closing is a warning."""
        inner, self.inner = self.inner, None
        if inner is None:
            return
        try:
            inner.close(failed)
        except Exception as exc:  # noqa: BLE001
            _warn(self.name, "closing", exc)


def _warn(name: str, what: str, exc: BaseException) -> None:
    message = " ".join(f"{type(exc).__name__}: {exc}".split())
    log.warning("tracking %r stopped (%s: %s); the run goes on, metrics.jsonl has every round", name, what, message)


def open_tracker(name: str, run_dir: Path, first_round: int) -> Tracker:
    """Return the tracker ``name`` of ``TRACKERS`` for the run folder ``run_dir`` whose next round is
    ``first_round`` (0 for a new run), guarded; one that cannot start is a warning and no tracking."""
    if TRACKERS[name] is NullTracker:
        return NullTracker()
    try:
        inner = TRACKERS[name](run_dir, first_round)
    except Exception as exc:  # noqa: BLE001
        _warn(name, "starting", exc)
        return NullTracker()
    return GuardedTracker(inner, name)

