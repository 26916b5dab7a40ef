"""Nothing a runner started outlives it: real processes, real signals.

``runners.processes`` on its own: a child that starts a grandchild in a session of its own (as
Flower's SuperLink starts its SuperExec) is stopped with it; a runner sent SIGTERM or SIGINT stops
both first; a runner killed outright takes its children along (the parent-death signal), also one
started from a thread that had already ended, and its watcher stops the grandchild. Then ``python -m deploy.launch_local`` itself: every
process that was its descendant (read from /proc before the signal: SuperLink,
SuperExecs, SuperNode, ``flwr run``, ServerApp) is gone within 20 s of a SIGTERM during a run, of a
SIGINT, and of a SIGKILL. And a pytest session with the project's conftest, sent SIGTERM, runs its
fixtures' teardowns and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from runners import processes

REPO = Path(__file__).resolve().parent.parent
SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]
# a child that starts a grandchild in a session of its own and prints the grandchild's pid
CHILD = [sys.executable, "-c", (
    "import subprocess, sys, time\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)\n"
    "print(g.pid, flush=True)\n"
    "time.sleep(600)\n"
)]
# a runner: handlers installed, that child, and one more child started from a thread that then ends
RUNNER = f"""
import json, subprocess, sys, threading, time
from runners import processes
processes.install_signal_handlers()
child = processes.start({CHILD!r}, stdout=subprocess.PIPE, text=True)
grandchild = int(child.stdout.readline())
box = []
thread = threading.Thread(target=lambda: box.append(processes.start({SLEEP!r})))
thread.start()
thread.join()
print(json.dumps({{"child": child.pid, "grandchild": grandchild, "threaded": box[0].pid}}), flush=True)
time.sleep(600)
"""


def _alive(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        if not processes.gone(p):
            try:
                out.append(f"{p.pid} {' '.join(p.cmdline())[:160]}")
            except psutil.Error:
                out.append(str(p.pid))
    return out


def _all_gone(procs: list[psutil.Process], timeout: float) -> list[str]:
    """Wait until ``procs`` have exited; return those still running after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while _alive(procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _alive(procs)


def test_stop_takes_the_grandchild_in_its_own_session():
    child = processes.start(CHILD, stdout=subprocess.PIPE, text=True)
    grandchild = psutil.Process(int(child.stdout.readline()))
    assert os.getsid(grandchild.pid) != os.getsid(child.pid)  # not in the child's group or session
    family = [psutil.Process(child.pid), grandchild]
    try:
        processes.stop(child)
        assert _all_gone(family, 10) == []
        assert child.pid not in processes._children  # it left the registry
    finally:
        processes.terminate(family, grace=1)


def test_run_stops_the_family_on_a_timeout(tmp_path):
    out = tmp_path / "pid"
    script = CHILD[2].replace("print(g.pid, flush=True)", f"open({str(out)!r}, 'w').write(str(g.pid))")
    with pytest.raises(subprocess.TimeoutExpired):
        processes.run([sys.executable, "-c", script], timeout=3)
    try:
        grandchild = [psutil.Process(int(out.read_text()))]
    except psutil.NoSuchProcess:
        return  # gone already
    try:
        assert _all_gone(grandchild, 10) == []
    finally:
        processes.terminate(grandchild, grace=1)


@pytest.fixture(autouse=True)
def _sigint_reaches_the_children():
    """A shell's background job (``make test &``) starts with SIGINT ignored, and an ignored signal is
    inherited (and, by design, stays ignored in runners.processes): give this test's children the
    default disposition, as a terminal's Ctrl-C would find it."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["SIGTERM", "SIGINT", "SIGKILL"])
def test_a_signalled_runner_leaves_nothing(sig):
    runner = processes.start([sys.executable, "-c", RUNNER], cwd=REPO, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    started = json.loads(runner.stdout.readline())
    tree = [psutil.Process(runner.pid), *psutil.Process(runner.pid).children(recursive=True)]
    try:
        assert {started["child"], started["grandchild"], started["threaded"]} <= {p.pid for p in tree}
        assert [p for p in tree if "--guard" in p.cmdline()], "no watcher"
        time.sleep(3)  # the watcher scans every second
        assert len(_alive(tree)) == 5  # runner, watcher, children (the thread's outlived its thread), grandchild
        os.kill(runner.pid, sig)
        code = runner.wait(timeout=30)
        if sig == signal.SIGKILL:  # no handler ran: the kernel took the direct children, the watcher the rest
            direct = [p for p in tree if p.pid in (started["child"], started["threaded"])]
            assert _all_gone(direct, 10) == []
            assert _all_gone(tree, 20) == []
            assert code == -signal.SIGKILL
        else:
            assert _all_gone(tree, 20) == []
            assert code == (128 + signal.SIGTERM if sig == signal.SIGTERM else -signal.SIGINT)
    finally:
        processes.terminate(tree, grace=1)  # what a failure left
        processes.stop(runner, grace=1)


# a pytest session of its own with the project's conftest: a fixture holds a child while the test sleeps
INNER_TEST = """
import sys, time
import pytest
from runners import processes

@pytest.fixture
def child():
    proc = processes.start([sys.executable, "-c", "import time; time.sleep(600)"])
    print("CHILD", proc.pid, flush=True)
    yield proc
    print("TEARDOWN", flush=True)

def test_sleeps(child):
    time.sleep(600)
"""


def test_a_pytest_session_sent_sigterm_tears_down_and_leaves_nothing(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), str(REPO)])}
    session = processes.start([sys.executable, "-m", "pytest", "-q", "-s", "-p", "conftest", "-p", "no:cacheprovider",
                               "test_inner.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    tree: list[psutil.Process] = []
    try:
        lines = []
        for line in session.stdout:
            lines.append(line)
            if line.startswith("CHILD "):
                break
        assert lines and lines[-1].startswith("CHILD "), "".join(lines)[-3000:]
        tree = [psutil.Process(session.pid), *psutil.Process(session.pid).children(recursive=True)]
        assert int(lines[-1].split()[1]) in {p.pid for p in tree}
        os.kill(session.pid, signal.SIGTERM)
        rest = session.communicate(timeout=60)[0]
        assert "TEARDOWN" in rest, rest[-3000:]  # the fixture's teardown ran: the session ended as on Ctrl-C
        assert _all_gone(tree, 20) == []
    finally:
        processes.terminate(tree, grace=1)
        processes.stop(session, grace=1)


# --- the real launcher -------------------------------------------------------------------------------
RUN_CONFIG = ("num-server-rounds=50 backbone='vit' "
              "backbone-kwargs='{\"img_size\": 28, \"patch_size\": 7, \"embed_dim\": 32, \"depth\": 12, \"num_heads\": 2}' "
              "backbone-weights='random' local-steps=1 batch-size=8 eval-max-examples=20 capacities='12' domains='mnist'")


def _launch(tmp_path: Path, with_run: bool) -> tuple[subprocess.Popen, Path]:
    """``python -m deploy.launch_local`` with one SuperNode: ``--up``, or a long tiny run."""
    args = [sys.executable, "-m", "deploy.launch_local", "--capacities", "12", "--domains", "mnist",
            "--work-dir", str(tmp_path / "work"), "--output-dir", str(tmp_path / "runs")]
    args += ["--run-config", RUN_CONFIG] if with_run else ["--up"]
    home = tmp_path / "flwr-home"
    home.mkdir()
    log = tmp_path / "launcher.log"
    with open(log, "w") as sink:
        proc = processes.start(args, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**os.environ, "FLWR_HOME": str(home)})
    return proc, log


def _descendants_when_up(runner: subprocess.Popen, log: Path, needed: tuple[str, ...], timeout: float = 240) -> list[psutil.Process]:
    """Wait until the runner's descendants include a process for each name in ``needed``; return them all."""
    deadline = time.monotonic() + timeout
    while True:
        assert runner.poll() is None, f"the launcher exited with {runner.returncode}:\n{log.read_text()[-3000:]}"
        tree = psutil.Process(runner.pid).children(recursive=True)
        cmdlines = []
        for p in tree:
            try:
                cmdlines.append(" ".join(p.cmdline()))
            except psutil.Error:
                pass
        if all(any(name in c for c in cmdlines) for name in needed) and ("online" in log.read_text() or "flwr-serverapp" in needed):
            return tree
        assert time.monotonic() < deadline, f"not up after {timeout} s: {cmdlines}\n{log.read_text()[-3000:]}"
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig, with_run",
    [(signal.SIGTERM, True), (signal.SIGINT, False), (signal.SIGKILL, False)],
    ids=["SIGTERM-during-a-run", "SIGINT", "SIGKILL"],
)
def test_a_signalled_launcher_leaves_no_flower_process(tmp_path, sig, with_run):
    missing = [tool for tool in ("openssl", "ssh-keygen") if shutil.which(tool) is None]
    assert not missing, f"the launcher needs {missing} on PATH (Debian: apt-get install openssl openssh-client)"
    runner, log = _launch(tmp_path, with_run)
    tree: list[psutil.Process] = []
    try:
        needed = ("flower-superlink", "flower-supernode", "flower-superexec")
        tree = _descendants_when_up(runner, log, needed + (("flwr run", "flwr-serverapp") if with_run else ()))
        os.kill(runner.pid, sig)
        left = _all_gone([psutil.Process(runner.pid), *tree], 20)  # the launcher too: a zombie counts as gone
        assert left == [], f"still running 20 s after {sig.name} to the launcher:\n" + "\n".join(left)
    finally:
        processes.terminate(tree, grace=1)  # whatever the launcher left (before the fix: everything)
        processes.stop(runner, grace=1)
