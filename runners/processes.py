"""Child processes that do not outlive the process that started them.

Everything FedRA's launchers start (``deploy.launch_local``'s SuperLink, SuperNodes and ``flwr run``,
``runners.simulate``'s SuperLink and ``flwr run``, the benchmarks' runs, the tests' federations) is
started with :func:`start` (or :func:`run`), which

* puts the child in a process group and session of its own (``start_new_session``): a Ctrl-C in a
  terminal reaches the starter only, which stops its children itself, in order;
* on Linux, sets the child's parent-death signal (``prctl(PR_SET_PDEATHSIG, SIGKILL)``): when the
  starter dies without stopping them (SIGKILL, a crash, the OOM killer), the kernel kills its direct
  children. The kernel sends it when the *thread* that started the child ends, not the process, so a
  child asked for from another thread than the main one is started by a keeper thread that lives as
  long as the process (a SuperNode started by a test's helper thread outlives that thread). The
  signal survives ``exec`` (the ``deploy/*.sh`` scripts ``exec`` the Flower executable), not an
  ``exec`` of a set-user-ID program;
* keeps the child in a registry until it is stopped.

At a normal exit (``atexit``), and on SIGTERM and SIGINT once :func:`install_signal_handlers` ran,
every registered child's family is stopped: the child, every process in its process group, and every
descendant of these found by walking ``/proc`` (Flower's SuperLink starts its SuperExec in a session
of its own, and the ServerApp under that: the process group alone misses them). A family gets
SIGTERM (and SIGCONT, for a frozen one), ``GRACE`` seconds to exit, then SIGKILL. The signal handler
then raises ``SystemExit(128 + signal)`` for SIGTERM (``finally`` blocks and ``atexit`` run, the exit
code is the conventional 143) and ``KeyboardInterrupt`` for SIGINT (as Python does by default); from
then on :func:`start` refuses new children (a worker thread would otherwise start the next run while
the main thread unwinds). A second signal while stopping skips the grace period.

A starter killed outright (SIGKILL, the OOM killer) runs none of this. Its direct children get the
parent-death signal; for the rest, the first :func:`start` in a process also starts a watcher
(``python runners/processes.py --guard PID``, in a session of its own) that scans the starter's
descendants in ``/proc`` every second, remembers them (pid and start time, so a reused pid is never
hit), and is told every child's process group through a pipe of which the starter holds the only
write end. When that pipe ends (the starter exited or died) the watcher stops whatever it
remembers that still runs, and the members of those groups: SIGTERM, ``GRACE`` s, SIGKILL. After a
normal exit nothing is left for it to stop. Flower's SuperExec, ServerApp and ClientApp processes
also watch their parent's pid and exit a few seconds after it; Flower's simulation engine (its
``flwr-simulation`` process and Ray's) does not, and is the watcher's.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from queue import SimpleQueue
from typing import Any

import psutil

GRACE = 5.0  # seconds between SIGTERM and SIGKILL
PR_SET_PDEATHSIG = 1

_children: dict[int, subprocess.Popen] = {}  # the registry: pid -> child, until stopped
_keeper: SimpleQueue | None = None
_keeper_lock = threading.Lock()
_stopping = False  # a signal handler is stopping the children
_closed = False  # a signal ended this process's work: no new children
_watcher: subprocess.Popen | None = None  # see _watch()
_watcher_fd: int | None = None  # the only write end of the watcher's stdin
_watcher_lock = threading.Lock()

try:  # resolved once here: between fork and exec the child only calls it
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
except (OSError, AttributeError):
    _prctl = None


def start(
    command: Sequence[str],
    *,
    death_signal: int = signal.SIGKILL,
    preexec_fn: Callable[[], None] | None = None,
    **popen_kwargs: Any,
) -> subprocess.Popen:
    """``subprocess.Popen(command, **popen_kwargs)`` in a session of its own, with the parent-death
    guard (``death_signal``, 0 for none; then ``preexec_fn`` runs), registered until :func:`stop`
    (or the exit, or a handled signal) stops it."""
    if "start_new_session" in popen_kwargs or "process_group" in popen_kwargs:
        raise ValueError("start() puts the child in a session of its own")
    if _closed:
        raise RuntimeError(f"not starting {command[0]}: this process is stopping after a signal")
    preexec = _guard(os.getpid(), death_signal, preexec_fn) if death_signal and _prctl is not None else preexec_fn

    _watch()

    def spawn() -> subprocess.Popen:
        proc = subprocess.Popen(list(command), start_new_session=True, preexec_fn=preexec, **popen_kwargs)
        _children[proc.pid] = proc
        _tell_watcher(proc.pid)
        return proc

    if threading.current_thread() is threading.main_thread():
        return spawn()
    return _in_keeper(spawn)


def run(
    command: Sequence[str],
    *,
    timeout: float | None = None,
    check: bool = False,
    input: str | bytes | None = None,
    capture_output: bool = False,
    grace: float = GRACE,
    **popen_kwargs: Any,
) -> subprocess.CompletedProcess:
    """Like ``subprocess.run``, with the child started by :func:`start`; on a timeout, an exception or
    a signal while it runs, and after it ended, its whole family is stopped (:func:`stop`)."""
    if capture_output:
        popen_kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if input is not None:
        popen_kwargs["stdin"] = subprocess.PIPE
    proc = start(command, **popen_kwargs)
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    finally:
        stop(proc, grace)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    if check:
        result.check_returncode()
    return result


def family(pid: int, leader: bool = True) -> list[psutil.Process]:
    """The process ``pid`` (unless ``leader`` is False: it was reaped, its pid may be another
    process's now), the members of its process group (``pid`` leads one when started by
    :func:`start`; Linux does not reuse a pid while a group of that id exists) and all their
    descendants, as found in ``/proc`` now."""
    roots: dict[int, psutil.Process] = {}
    if leader:
        try:
            roots[pid] = psutil.Process(pid)
        except psutil.NoSuchProcess:
            pass
    for p in psutil.process_iter():
        try:
            if p.pid != pid and os.getpgid(p.pid) == pid:
                roots[p.pid] = p
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    found = dict(roots)
    for root in roots.values():
        try:  # psutil reads the parent links from /proc: escaped sessions included
            found.update((c.pid, c) for c in root.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return list(found.values())


def stop(proc: subprocess.Popen, grace: float = GRACE, sig: int = signal.SIGTERM) -> None:
    """Stop ``proc`` and its family: ``sig`` (SIGTERM), ``grace`` seconds, then SIGKILL; reap it.
    With ``sig=SIGKILL``: at once (a crash, not a shutdown)."""
    _stop_families([proc], grace, sig)


def stop_all(grace: float = GRACE) -> None:
    """Stop every registered child and its family, all at once (what the exit and the signals do)."""
    _stop_families(list(_children.values())[::-1], grace, signal.SIGTERM)


def terminate(processes: Iterable[psutil.Process], grace: float = GRACE, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` (and SIGCONT) to ``processes`` that still run; SIGKILL those left after ``grace`` s."""
    processes = list(processes)
    _signal(processes, sig)
    _wait_gone(processes, grace)
    if sig != signal.SIGKILL:
        _signal(processes, signal.SIGKILL)
        _wait_gone(processes, 5.0)


def gone(p: psutil.Process) -> bool:
    """True when ``p`` has exited (a zombie counts as exited; so does a pid taken by another process)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def install_signal_handlers(keyboard_interrupt: bool = False) -> None:
    """On SIGTERM and SIGINT stop every registered child (:func:`stop_all`), then raise
    ``SystemExit(128 + signal)`` for SIGTERM and ``KeyboardInterrupt`` for SIGINT, or call the
    handler that was there before (when it was not Python's default). ``keyboard_interrupt``:
    SIGTERM raises ``KeyboardInterrupt`` too (pytest then ends the session and runs the teardowns).
    A signal ignored here (SIGINT of a shell's background job) stays ignored. Call it from the
    main thread."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if previous == signal.SIG_IGN or getattr(previous, "_fedra_stops_children", False):
            continue
        handler = _handler(sig, previous, keyboard_interrupt)
        handler._fedra_stops_children = True  # type: ignore[attr-defined]
        signal.signal(sig, handler)


def _handler(sig: int, previous: Any, keyboard_interrupt: bool) -> Callable[[int, Any], None]:
    def handle(signum: int, frame: Any) -> None:
        global _stopping, _closed
        if _stopping:  # a second signal while stopping: no more grace
            stop_all(grace=0.0)
        else:
            _stopping = True
            try:
                stop_all()
            finally:
                _stopping = False
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)
            return
        _closed = True
        if signum == signal.SIGINT or keyboard_interrupt:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    return handle


def _stop_families(procs: Sequence[subprocess.Popen], grace: float, sig: int) -> None:
    if not procs:
        return
    members = {p.pid: p for proc in procs for p in family(proc.pid, proc.returncode is None)}
    _signal(members.values(), sig)
    for proc in procs:
        _killpg(proc.pid, sig)
    if sig != signal.SIGKILL:
        _wait_gone(list(members.values()), grace, procs)
        for proc in procs:  # what started meanwhile, then the rest of the group
            members.update((p.pid, p) for p in family(proc.pid, proc.returncode is None))
            _killpg(proc.pid, signal.SIGKILL)
        _signal(members.values(), signal.SIGKILL)
    _wait_gone(list(members.values()), 5.0, procs)
    for proc in procs:
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            continue
        _children.pop(proc.pid, None)


def _signal(processes: Iterable[psutil.Process], sig: int) -> None:
    for p in processes:
        if gone(p):
            continue
        try:  # psutil checks that the pid still is that process
            p.send_signal(sig)
            if sig != signal.SIGKILL:
                p.send_signal(signal.SIGCONT)  # a frozen process acts on SIGTERM only once thawed
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue


def _killpg(pgid: int, sig: int) -> None:
    """Signal the process group ``pgid`` (a process of the group may have left the tree). Linux
    does not reuse a pid while a group of that id exists, so this reaches no other process."""
    try:
        os.killpg(pgid, sig)
        if sig != signal.SIGKILL:
            os.killpg(pgid, signal.SIGCONT)
    except (ProcessLookupError, PermissionError):
        return


def _wait_gone(processes: list[psutil.Process], timeout: float, reap: Sequence[subprocess.Popen] = ()) -> None:
    deadline = time.monotonic() + timeout
    while True:
        for proc in reap:  # our own children stay zombies until reaped
            proc.poll()
        if all(gone(p) for p in processes) or time.monotonic() >= deadline:
            return
        time.sleep(0.1)


def _guard(parent: int, death_signal: int, then: Callable[[], None] | None) -> Callable[[], None]:
    prctl = _prctl

    def preexec() -> None:  # in the child, between fork and exec
        prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:  # the starter died before the guard was set
            os._exit(1)
        if then is not None:
            then()

    return preexec


def _in_keeper(spawn: Callable[[], subprocess.Popen]) -> subprocess.Popen:
    """Run ``spawn`` in the keeper thread (started once, lives as long as the process)."""
    global _keeper
    with _keeper_lock:
        if _keeper is None:
            _keeper = SimpleQueue()
            threading.Thread(target=_keep, args=(_keeper,), name="fedra-process-keeper", daemon=True).start()
    done: Future = Future()
    _keeper.put((spawn, done))
    return done.result()


def _keep(queue: SimpleQueue) -> None:
    while True:
        spawn, done = queue.get()
        try:
            done.set_result(spawn())
        except BaseException as exc:  # noqa: BLE001  (raised in the thread that asked)
            done.set_exception(exc)


def _watch() -> None:
    """Start this process's watcher, once (see the module's docstring)."""
    global _watcher, _watcher_fd
    if os.name != "posix":
        return
    with _watcher_lock:
        if _watcher_fd is not None:
            return
        read, write = os.pipe()  # not inherited by what this process starts (close-on-exec)
        try:
            _watcher = subprocess.Popen(
                [sys.executable, "-I", os.path.abspath(__file__), "--guard", str(os.getpid())],
                stdin=read, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        except OSError:  # no watcher: the rest still holds
            os.close(write)
            return
        finally:
            os.close(read)
        _watcher_fd = write


def _tell_watcher(pgid: int) -> None:
    if _watcher_fd is not None:
        try:
            os.write(_watcher_fd, f"{pgid}\n".encode())
        except OSError:  # the watcher is gone
            pass


def _guard_main(starter: int) -> int:
    """The watcher's loop: remember the starter's descendants and the groups it names on stdin
    until stdin ends, then stop those still running."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # a stop of the starter's family: not ours
        signal.signal(sig, signal.SIG_IGN)
    seen: set[psutil.Process] = set()
    groups: set[int] = set()
    pending = b""
    while True:
        ready, _, _ = select.select([0], [], [], 1.0)
        if ready:
            data = os.read(0, 4096)
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            groups.update(int(line) for line in lines if line.strip())
        try:
            new = set(psutil.Process(starter).children(recursive=True)) - seen
        except psutil.NoSuchProcess:
            break
        seen.update(p for p in new if not _is_watcher(p))  # another starter's watcher ends on its own
        seen = {p for p in seen if not gone(p)}
    left = {p for p in seen if not gone(p)}
    for pgid in groups:  # a member that left the tree in the last second
        left.update(family(pgid, leader=False))
    terminate(left)
    return 0


def _is_watcher(p: psutil.Process) -> bool:
    try:
        return p.pid == os.getpid() or "--guard" in p.cmdline()[2:4]
    except psutil.Error:
        return False


def _forget_after_fork() -> None:
    """A forked copy of this process (multiprocessing) does not own its parent's children, nor
    the watcher's pipe (held open here, it would keep the watcher waiting after the parent died)."""
    global _keeper, _watcher, _watcher_fd
    _children.clear()
    _keeper = None
    if _watcher_fd is not None:
        os.close(_watcher_fd)
    _watcher, _watcher_fd = None, None


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(stop_all)

if __name__ == "__main__" and sys.argv[1:2] == ["--guard"]:
    sys.exit(_guard_main(int(sys.argv[2])))
