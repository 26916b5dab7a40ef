"""Kill and resume: a server process killed by SIGKILL (after a round, or in the middle of writing
its checkpoint) and resumed with ``resume=true`` ends bit-identical to an uninterrupted run, for
FedRA and for the baselines with server state (InclusiveFL's momentum) or a round schedule
(DepthFL's distillation weight), with a node whose capacity changed during the run. Resume refuses
a missing, truncated or foreign checkpoint with one line naming the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict

from runners import processes
from server_app.checkpoint import CheckpointError, load_checkpoint
from app_helpers import run_inprocess
from server_app.outputs import read_metrics

SHRINKING = 102  # reports 4 blocks instead of its configured 6 in every training reply


def shrink(node_id: int, message: Message, reply: Message) -> Message:
    """The node ``SHRINKING`` reports a new capacity in its replies (the server uses it next round)."""
    if node_id != SHRINKING or reply.has_error():
        return reply
    metrics = MetricRecord({**dict(reply.content["metrics"]), "capacity-layers": 4})
    return Message(RecordDict({"arrays": reply.content["arrays"], "metrics": metrics}), reply_to=message)


KILLED_RUN = """
import sys, time
sys.path.insert(0, {tests!r})
import torch; torch.set_num_threads({threads})
from pathlib import Path
from test_resume import shrink
from app_helpers import run_inprocess
if {in_write}:  # block for good between the temporary file and the rename of round 3's checkpoint
    import server_app.checkpoint as checkpoint
    real_replace = checkpoint.os.replace
    def replace(src, dst):
        if checkpoint.load_checkpoint(Path(src)).round == 3:
            Path(str(dst) + ".blocked").touch()
            time.sleep(600)
        real_replace(src, dst)
    checkpoint.os.replace = replace
else:  # stall in round 3, after round 2's checkpoint
    def shrink_then_stall(node_id, message, reply):
        if int(message.content["config"]["server-round"]) == 3:
            time.sleep(600)
        return shrink(node_id, message, reply)
run_inprocess(Path({out!r}), intercept=shrink if {in_write} else shrink_then_stall, **{{"num-server-rounds": 4, "method": {method!r}}})
"""


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run never reached the point to kill it"
        time.sleep(0.2)
    processes.stop(proc, sig=signal.SIGKILL)  # it and whatever it started, at once


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, in_write",
    [("fedra", False), ("inclusivefl", False), ("depthfl", False), ("fedra", True)],
    ids=["fedra", "inclusivefl", "depthfl", "fedra-killed-while-writing"],
)
def test_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path, method, in_write):
    out = tmp_path / "killed"
    ckpt = out / "run" / "checkpoint.safetensors"
    # same thread count as this process: float reductions, hence the bits, depend on it
    script = KILLED_RUN.format(tests=str(Path(__file__).parent), out=str(out), threads=torch.get_num_threads(),
                               method=method, in_write=in_write)
    # the run to kill starts first, in a process of its own; it stops for good at the point where it is
    # killed (below), and meanwhile the uninterrupted run goes on here (one thread each: the same bits)
    proc = processes.start([sys.executable, "-c", script], env=os.environ.copy())
    try:
        full_dir, _, _ = run_inprocess(tmp_path / "full", intercept=shrink, **{"num-server-rounds": 4, "method": method})
    except BaseException:
        processes.stop(proc, sig=signal.SIGKILL)
        raise
    expected = load_checkpoint(full_dir / "checkpoint.safetensors")
    full_records = read_metrics(full_dir)
    assert [r.get("capacities") for r in full_records[1:]] == [[12, 6, 3], [12, 4, 3], [12, 4, 3], [12, 4, 3]]

    if in_write:
        _kill_when(proc, lambda: Path(str(ckpt) + ".blocked").is_file())
        assert ckpt.with_name(ckpt.name + ".tmp").is_file()  # killed with round 3's file written but not renamed
    else:
        _kill_when(proc, lambda: ckpt.is_file() and load_checkpoint(ckpt).round == 2)
    assert load_checkpoint(ckpt).round == 2  # the previous checkpoint survived the kill intact

    resumed_dir, _, _ = run_inprocess(out, intercept=shrink, **{"num-server-rounds": 4, "method": method, "resume": True})
    got = load_checkpoint(resumed_dir / "checkpoint.safetensors")
    assert got.round == 4
    assert got.global_state.keys() == expected.global_state.keys()
    assert all(torch.equal(got.global_state[k], expected.global_state[k]) for k in expected.global_state)
    assert got.method_state.keys() == expected.method_state.keys()
    assert all(torch.equal(got.method_state[k], expected.method_state[k]) for k in expected.method_state)
    if method == "inclusivefl":
        assert got.method_state  # the momentum is there and was restored, not rebuilt from nothing
    records = read_metrics(resumed_dir)
    assert [r["round"] for r in records] == [0, 1, 2, 3, 4]
    assert [r.get("capacities") for r in records] == [r.get("capacities") for r in full_records]
    assert [r.get("train-loss") for r in records] == [r.get("train-loss") for r in full_records]


@pytest.mark.slow
def test_resume_refuses_other_config(tmp_path):
    run_inprocess(tmp_path, **{"num-server-rounds": 1})
    with pytest.raises(ValueError, match="was made with another config"):
        run_inprocess(tmp_path, **{"num-server-rounds": 2, "resume": True, "lr": 0.1})


@pytest.mark.slow
def test_resume_without_checkpoint_names_the_path(tmp_path):
    expected = tmp_path / "run" / "checkpoint.safetensors"
    with pytest.raises(CheckpointError, match=f"no checkpoint at {expected}"):
        run_inprocess(tmp_path, **{"num-server-rounds": 1, "resume": True})


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_resume_from_a_damaged_checkpoint_names_the_file(tmp_path, damage):
    run_dir, _, _ = run_inprocess(tmp_path, **{"num-server-rounds": 1})
    ckpt = run_dir / "checkpoint.safetensors"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
        match = f"checkpoint {ckpt} cannot be read"
    elif damage == "garbage":
        ckpt.write_bytes(b"\x00" * 64)
        match = f"checkpoint {ckpt} cannot be read"
    else:  # a checkpoint of the same config whose global state lacks a key
        from safetensors.torch import load_file, save_file
        from safetensors import safe_open

        with safe_open(str(ckpt), framework="pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(ckpt))
        tensors.pop("global/head.bias")
        from server_app.checkpoint import tensors_sha256

        save_file(tensors, str(ckpt), metadata={**metadata, "sha256": tensors_sha256(tensors)})  # consistent, but foreign
        match = f"checkpoint {ckpt} does not fit this run's model \\(first differing key 'head.bias'\\)"
    with pytest.raises(CheckpointError, match=match):
        run_inprocess(tmp_path, **{"num-server-rounds": 2, "resume": True})
