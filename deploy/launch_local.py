"""Bring up a real FedRA deployment on one machine as plain processes, run the app, tear it down.

The topology is the one of ``deploy/compose.tls.yaml`` and of the multi-machine scripts, without
Docker: a SuperLink with TLS and SuperNode authentication (``deploy/start_superlink.sh``: the
SuperLink itself, i.e. Control and Runtime API, on a free port of 127.0.0.1 for the operator, and
the Fleet API proxy on a free port of ``public_host`` for the SuperNodes), N SuperNodes
(each with its own capacity, its own data, key pair, Flower home and runtime port) and the
operator's ``flwr run``. Every step goes through the scripts in ``deploy/`` (certificates,
keys, registration, start-up, ``flwr run``), so they are exercised exactly as documented.

Used from Python (the end-to-end test does this)::

    nodes = [NodeSpec(12, data_format="imagefolder", data_root="/data/site-a"),
             NodeSpec(6, data_format="digits", domain="printed")]
    with local_federation(nodes) as fed:
        result = fed.run_app({"num-server-rounds": 2, "output-dir": "runs"})

or from the command line (digits domains, or ``--data-roots DIR1,DIR2,DIR3`` for image folders)::

    python -m deploy.launch_local --capacities 12,6,3 --domains mnist,printed,usps --run-config "num-server-rounds=2"

Everything started is stopped by process id on exit, including the SuperExec and app processes
Flower starts underneath, also when something fails half-way, and on SIGTERM or SIGINT; a launcher
killed outright takes its SuperLink and SuperNodes along (``runners.processes``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, replace
from pathlib import Path

import psutil
from flwr.common.config import parse_config_args

from fedra_core.data.registry import node_format
from runners import processes
from runners.simulate import format_run_config, free_port, prepare_assets, wait_for_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
CONNECTION = "fedra-local"


@dataclass(frozen=True)
class NodeSpec:
    """One SuperNode: its capacity (blocks it can train), its own data and local settings.

    ``NodeSpec(capacity, *, data_format, data_root=None, domain="", partition_id=None, name="",
    device="cpu", threads=1, node_worker="auto")``. ``data_format`` is the node-config ``data-format``:
    a format of ``fedra_core.data.registry`` (``imagefolder``: ``data_root`` with ``train/<class>/...``;
    a dataset's name: one ``domain`` of it; ``partition``: ``partition_id`` of the run's dataset; the
    registry says which of ``data_root``, ``domain``, ``partition_id`` each needs). ``name`` names the node's key pair;
    by default ``supernode-<domain>`` (else the data folder's name, else ``p<partition id>``).
    """

    capacity: int
    _: KW_ONLY
    data_format: str
    data_root: str | None = None
    domain: str = ""
    partition_id: int | None = None
    name: str = ""
    device: str = "cpu"
    threads: int | None = 1
    node_worker: str = "auto"  # node-config node-worker: the warm worker (auto: on), or off

    def __post_init__(self) -> None:
        fmt = self.data_format
        try:  # the formats and the node-config keys each needs: fedra_core.data.registry
            needs = node_format(fmt).needs
        except ValueError as exc:
            raise ValueError(f"NodeSpec data_format: {exc}") from None
        if not (isinstance(self.capacity, int) and self.capacity >= 1):
            raise ValueError(f"NodeSpec capacity {self.capacity!r}: a positive integer")
        given = {"data-root": self.data_root, "domain": self.domain, "partition-id": self.partition_id}
        for key in needs:
            if given[key] in (None, ""):
                raise ValueError(f"NodeSpec data_format {fmt!r} needs {key.replace('-', '_')}")
        if ("partition-id" in needs) != (self.partition_id is not None):
            raise ValueError(f"NodeSpec partition_id {self.partition_id!r}: given exactly when data_format is 'partition' (not {fmt!r})")
        if self.node_worker not in ("auto", "on", "off"):
            raise ValueError(f"NodeSpec node_worker {self.node_worker!r}: 'auto', 'on' or 'off'")
        for key in ("data_root", "domain", "device"):
            if "'" in str(getattr(self, key) or ""):
                raise ValueError(f"NodeSpec {key} {getattr(self, key)!r}: a single quote cannot be passed in node-config")

    @property
    def key_name(self) -> str:
        """The name of the node's key pair (and of its registration on the SuperLink)."""
        if self.name:
            return self.name
        label = self.domain or (Path(self.data_root).name if self.data_root else f"p{self.partition_id}")
        return "supernode-" + re.sub(r"[^A-Za-z0-9._-]+", "-", label)

    def node_config(self) -> str:
        """Return the node's ``--node-config`` string (what ``start_supernode.sh`` passes)."""
        parts = [f"data-format='{self.data_format}'", f"capacity-layers={self.capacity}", f"device='{self.device}'"]
        if self.data_root:
            parts.append(f"data-root='{Path(self.data_root).resolve()}'")
        if self.domain:
            parts.append(f"domain='{self.domain}'")
        if self.partition_id is not None:
            parts.append(f"partition-id={self.partition_id}")
        if self.threads:
            parts.append(f"num-threads={self.threads}")
        if self.node_worker != "auto":
            parts.append(f"node-worker='{self.node_worker}'")
        return " ".join(parts)


@dataclass(frozen=True)
class RunResult:
    """What ``flwr run`` returned (exit code, output, also kept in ``log``) and how the run ended
    according to the SuperLink (``status``: ``finished:completed``, ``finished:failed``, ...).

    ``flwr run --stream`` exits with 0 even when the ServerApp fails, so check ``ok``.
    """

    returncode: int
    output: str
    log: Path
    run_id: int | None = None
    status: str = "unknown"

    @property
    def ok(self) -> bool:
        """True when ``flwr run`` succeeded and the run finished as completed."""
        return self.returncode == 0 and self.status == "finished:completed"


class LocalFederation:
    """A SuperLink and SuperNodes on loopback, all started and stopped by this object.

    ``work_dir`` receives certificates (``certs/``), node keys (``keys/``), a Flower home per
    process, and one log file per process (``logs/``).
    """

    def __init__(
        self, work_dir: Path, env: Mapping[str, str] | None = None, connection: str = CONNECTION, public_host: str = "127.0.0.1"
    ) -> None:
        """Prepare (but do not start) a federation in ``work_dir``; ``env`` adds environment variables;
        ``public_host`` is where the SuperNodes reach the Fleet API (a loopback address: 127.0.0.x)."""
        self.work_dir = Path(work_dir).resolve()
        self.public_host = public_host
        self.connection = connection
        self.certs = self.work_dir / "certs"
        self.keys = self.work_dir / "keys"
        self.logs = self.work_dir / "logs"
        self.operator_home = self.work_dir / "operator-home"
        self.superlink_dir = self.work_dir / "superlink"
        for folder in (self.logs, self.operator_home, self.superlink_dir):
            folder.mkdir(parents=True, exist_ok=True)
        bin_dir = str(Path(sys.executable).parent)  # flower-* executables of this environment first
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.env.setdefault("HF_HUB_OFFLINE", "1")
        self.port: int | None = None  # the public Fleet API (proxy) on public_host
        self.control_port: int | None = None  # the SuperLink itself on 127.0.0.1: Control + Runtime API
        self.database: Path | None = None
        self.processes: dict[str, subprocess.Popen] = {}
        self.nodes: dict[str, NodeSpec] = {}
        self._seen: dict[int, psutil.Process] = {}  # descendants seen so far (SuperExec, apps)

    # --- set-up -----------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """The SuperLink's public address, Fleet API only (``PUBLIC_HOST:PORT``): for SuperNodes."""
        if self.port is None:
            raise RuntimeError("the SuperLink has not been started")
        return f"{self.public_host}:{self.port}"

    @property
    def control_address(self) -> str:
        """The SuperLink's own loopback address (``127.0.0.1:PORT``): the operator's flwr CLI."""
        if self.control_port is None:
            raise RuntimeError("the SuperLink has not been started")
        return f"127.0.0.1:{self.control_port}"

    def generate_credentials(self, key_names: Sequence[str]) -> None:
        """Create a fresh CA, SuperLink certificate (localhost, 127.0.0.1, ``public_host``) and one key
        pair per name (replacing any left in ``work_dir`` by an earlier bring-up)."""
        self._script("gen_certs.sh", "--force", "-o", str(self.certs), "localhost", "127.0.0.1", self.public_host)
        self._script("gen_node_keys.sh", "--force", "-o", str(self.keys), *key_names)

    def start_superlink(self, timeout: float = 60.0, database: Path | None = None) -> None:
        """Start the SuperLink with TLS and SuperNode authentication (``deploy/start_superlink.sh``):
        Control + Runtime API on a free port of 127.0.0.1, the Fleet API proxy on a free port of
        ``public_host`` (the same ports again after :meth:`kill`); with ``database`` its state (runs,
        registered SuperNodes) lives in that SQLite file, so that a restarted SuperLink keeps it."""
        self.port = self.port or free_port()
        while self.control_port in (None, self.port):
            self.control_port = free_port()
        self.database = database or self.database
        command = [str(DEPLOY / "start_superlink.sh"), "--certs", str(self.certs), "--host", self.public_host,
                   "--port", str(self.port), "--control-host", "127.0.0.1", "--control-port", str(self.control_port)]
        if self.database is not None:
            command += ["--database", str(self.database)]
        proc = self._spawn("superlink", command, home=self.superlink_dir / "flwr-home", cwd=self.superlink_dir,
                           extra_env={"TMPDIR": str(self.superlink_dir)})  # the proxy's nginx files: here, even after a kill
        try:
            wait_for_port(self.control_port, proc, timeout)  # the SuperLink on 127.0.0.1
            _wait_listening(self.public_host, self.port, proc, timeout)  # the Fleet proxy
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; see {self.logs / 'superlink.log'}") from None
        self.write_connection()

    def write_connection(self) -> None:
        """Write the operator's connection entry (address + CA certificate) into its ``config.toml``."""
        out = subprocess.run(
            ["bash", "-c", 'source "$0" && fedra_write_connection "$@"', str(DEPLOY / "_common.sh"),
             str(self.operator_home), self.connection, self.control_address, str(self.certs / "ca.crt"), "0"],
            env=self.env, capture_output=True, text=True, timeout=30,
        )
        if out.returncode != 0:
            raise RuntimeError(f"could not write {self.operator_home / 'config.toml'}: {out.stderr.strip()}")

    def register(self, key_names: Sequence[str]) -> None:
        """Register the public keys of ``key_names`` on the SuperLink (``deploy/register_nodes.sh``)."""
        pubs = [str(self.keys / f"{name}.pub") for name in key_names]
        self._script(
            "register_nodes.sh", "--superlink", self.control_address, "--ca", str(self.certs / "ca.crt"),
            "--connection", self.connection, "--flwr-home", str(self.operator_home), *pubs,
        )

    def start_supernode(self, spec: NodeSpec) -> subprocess.Popen:
        """Start one authenticated SuperNode (``deploy/start_supernode.sh``) on its own runtime port."""
        name = spec.key_name
        if name in self.processes:
            raise ValueError(f"a SuperNode named {name!r} is already running")
        args = [str(DEPLOY / "start_supernode.sh"), "--port", str(free_port()), "--device", spec.device,
                "--data-format", spec.data_format]
        if spec.data_root:
            args += ["--data-root", spec.data_root]
        if spec.domain:
            args += ["--domain", spec.domain]
        if spec.partition_id is not None:
            args += ["--partition-id", str(spec.partition_id)]
        if spec.threads:
            args += ["--threads", str(spec.threads)]
        if spec.node_worker != "auto":
            args += ["--node-worker", spec.node_worker]
        args += [self.address, str(spec.capacity), str(self.keys / name), str(self.certs / "ca.crt")]
        extra_env = {"OMP_NUM_THREADS": str(spec.threads)} if spec.threads else {}
        proc = self._spawn(name, args, home=self.work_dir / "nodes" / name / "flwr-home", extra_env=extra_env)
        self.nodes[name] = spec
        return proc

    def spawn(self, name: str, command: Sequence[str]) -> subprocess.Popen:
        """Start a raw command (e.g. a SuperNode with a hand-written node-config) as process ``name``,
        with its own Flower home and log; it is stopped with the others."""
        return self._spawn(name, list(command), home=self.work_dir / "nodes" / name / "flwr-home")

    def kill(self, name: str) -> None:
        """SIGKILL process ``name`` and everything it started, at once (a crash, not a shutdown)."""
        self._track()
        processes.stop(self.processes.pop(name), sig=signal.SIGKILL)

    def pause(self, name: str, paused: bool = True) -> None:
        """Freeze (SIGSTOP) or thaw (SIGCONT) process ``name`` and everything it started: a node that
        hangs, or becomes slow beyond any timeout, and then comes back."""
        self._track()
        root = psutil.Process(self.processes[name].pid)
        for p in [root, *root.children(recursive=True)]:
            try:
                p.suspend() if paused else p.resume()
            except psutil.NoSuchProcess:
                pass

    def children(self, name: str) -> list[psutil.Process]:
        """Return the processes ``name`` started that are running now (e.g. a SuperNode's app process)."""
        try:
            return psutil.Process(self.processes[name].pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def online_nodes(self) -> list[dict]:
        """Return the SuperLink's list of online SuperNodes (``flwr supernode ls --format json``)."""
        reply = self._flwr_json("supernode", "ls", self.connection)
        return [n for n in reply.get("nodes", []) if n.get("status") == "online"]

    def wait_for_nodes(self, count: int, timeout: float = 120.0) -> list[dict]:
        """Wait until ``count`` SuperNodes are online; raise RuntimeError naming a node that exited."""
        deadline = time.monotonic() + timeout
        while True:
            self._track()
            for name in self.nodes:
                code = self.processes[name].poll()
                if code is not None:
                    raise RuntimeError(f"SuperNode {name} exited with code {code}; see {self.logs / (name + '.log')}")
            online = self.online_nodes()
            if len(online) >= count:
                return online
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(online)} of {count} SuperNodes online after {timeout:.0f} s")
            time.sleep(1.0)

    def start(self, nodes: Sequence[NodeSpec], timeout: float = 120.0) -> None:
        """Bring up the whole federation: credentials, SuperLink, registrations, SuperNodes, wait online."""
        names = [n.key_name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError(f"SuperNode names must be unique, got {names}")
        self.generate_credentials(names)
        self.start_superlink()
        self.register(names)
        for spec in nodes:
            self.start_supernode(spec)
        self.wait_for_nodes(len(nodes), timeout)

    # --- running ----------------------------------------------------------------------------------
    def run_app(
        self, run_config: Mapping[str, object], timeout: float | None = None, echo: bool = False, log_name: str = "flwr-run.log"
    ) -> RunResult:
        """Run the app in this repo with ``flwr run --stream`` (``deploy/run_app.sh``); wait for its end.

        ``run_config`` overrides ``[tool.flwr.app.config]``. With ``echo`` the log is also printed.
        The output goes to ``logs/<log_name>`` (runs at the same time need a log each).
        On timeout the ``flwr run`` client is stopped and TimeoutError raised.
        """
        overrides = [format_run_config({k: v}) for k, v in run_config.items()]
        log = self.logs / log_name
        command = [
            str(DEPLOY / "run_app.sh"), "--connection", self.connection, "--flwr-home", str(self.operator_home),
            "--app", str(REPO), *overrides,
        ]
        env = {**self.env, "FLWR_HOME": str(self.operator_home)}
        lines: list[str] = []
        with open(log, "w") as sink:
            proc = processes.start(
                command, env=env, cwd=self.work_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )

            def pump() -> None:
                assert proc.stdout is not None
                for line in proc.stdout:  # flwr run --stream ends when the run ends
                    lines.append(line)
                    sink.write(line)
                    sink.flush()
                    if echo:
                        print(line, end="", flush=True)

            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise TimeoutError(f"flwr run did not finish within {timeout:.0f} s; see {log}") from None
            finally:
                processes.stop(proc)  # at once when it ended; it leaves the registry
                reader.join(timeout=10)
        output = "".join(lines)
        found = re.search(r"started run (\d+)", output)
        run_id = int(found.group(1)) if found else None
        status = "not started"
        if run_id:
            try:
                status = self.run_status(run_id)
            except RuntimeError:  # the SuperLink is gone (killed, or not restarted yet)
                status = "unknown: SuperLink unreachable"
        return RunResult(proc.returncode, output, log, run_id, status)

    def run_status(self, run_id: int) -> str:
        """Return the SuperLink's status of run ``run_id`` (``flwr ls --run-id``), e.g. ``finished:completed``."""
        reply = self._flwr_json("ls", self.connection, "--run-id", str(run_id))
        runs = reply.get("runs", [])
        return str(runs[0]["status"]) if runs else "unknown"

    def new_key(self, name: str) -> Path:
        """Create one more key pair (``deploy/gen_node_keys.sh``) without registering it; return the private key."""
        self._script("gen_node_keys.sh", "-o", str(self.keys), name)
        return self.keys / name

    def supernode_command(
        self, spec: NodeSpec, private_key: Path | None, root_certificates: Path | None, max_wait: float = 10.0
    ) -> list[str]:
        """Return a raw ``flower-supernode`` command (for probes): TLS with ``root_certificates``, or
        the system trust store when None; node auth with ``private_key`` when given. It gives up
        connecting after one retry or ``max_wait`` seconds."""
        cmd = [
            self._bin("flower-supernode"), "--superlink", self.address, "--port", str(free_port()),
            "--node-config", spec.node_config(),
            "--max-retries", "1", "--max-wait-time", str(max_wait),
        ]
        if root_certificates is not None:
            cmd += ["--root-certificates", str(root_certificates)]
        if private_key is not None:
            cmd += ["--auth-supernode-private-key", str(private_key)]
        return cmd

    def probe(self, name: str, command: Sequence[str], timeout: float = 60.0) -> tuple[int | None, str]:
        """Run ``command`` (e.g. a SuperNode that should be refused) until it exits or ``timeout``
        passes; stop it (and what it started) in any case. Return (exit code or None, its log)."""
        proc = self._spawn(name, list(command), home=self.work_dir / "probes" / name / "flwr-home")
        deadline = time.monotonic() + timeout
        code: int | None = None
        try:
            while code is None and time.monotonic() < deadline:
                self._track()  # what it starts outlives it briefly: remember it for stop()
                try:
                    code = proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            processes.stop(proc)
            self.processes.pop(name, None)
        return code, (self.logs / f"{name}.log").read_text(errors="replace")

    # --- tear-down --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop every process this object started (SuperNodes first, then the SuperLink), by process id,
        and then whatever they started that is still running."""
        self._track()
        for name in [n for n in self.processes if n != "superlink"] + ["superlink"]:
            proc = self.processes.pop(name, None)
            if proc is not None:
                self._thaw(proc)
                processes.stop(proc)
        processes.terminate(self._seen.values())
        self._seen.clear()

    def __enter__(self) -> "LocalFederation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers ----------------------------------------------------------------------------------
    def _track(self) -> None:
        for proc in list(self.processes.values()):
            try:
                for child in psutil.Process(proc.pid).children(recursive=True):
                    self._seen.setdefault(child.pid, child)
            except psutil.NoSuchProcess:
                pass

    @staticmethod
    def _thaw(proc: subprocess.Popen) -> None:
        """SIGCONT a paused process tree so that it can be stopped gracefully."""
        try:
            root = psutil.Process(proc.pid)
            for p in [root, *root.children(recursive=True)]:
                p.resume()
        except psutil.NoSuchProcess:
            pass

    def _flwr_json(self, *args: str) -> dict:
        """Run ``flwr ARGS --format json`` as the operator; return the reply (RuntimeError on failure)."""
        return flwr_json(self._bin("flwr"), args, {**self.env, "FLWR_HOME": str(self.operator_home)})

    def _bin(self, name: str) -> str:
        found = shutil.which(name, path=self.env["PATH"])
        if found is None:
            raise RuntimeError(f"{name} not found; install flwr==1.42.0 in this environment")
        return found

    def _script(self, script: str, *args: str) -> None:
        out = subprocess.run(
            ["bash", str(DEPLOY / script), *args], env=self.env, capture_output=True, text=True, timeout=300
        )
        if out.returncode != 0:
            raise RuntimeError(f"deploy/{script} failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-2000:]}")

    def _spawn(
        self, name: str, command: list[str], home: Path, cwd: Path | None = None, extra_env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        home.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "FLWR_HOME": str(home), **(extra_env or {})}
        with open(self.logs / f"{name}.log", "w") as log:
            proc = processes.start(
                command, env=env, cwd=cwd or self.work_dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        self.processes[name] = proc
        return proc


def flwr_json(flwr: str, args: Sequence[str], env: Mapping[str, str], timeout: float = 120.0) -> dict:
    """Run ``flwr ARGS --format json`` (the executable ``flwr``) with ``env``; return its reply.

    Raises RuntimeError with the command's output when it fails or reports no success.
    """
    out = subprocess.run([flwr, *args, "--format", "json"], env=dict(env), capture_output=True, text=True, timeout=timeout)
    try:
        reply = json.loads(out.stdout[out.stdout.index("{"):])
    except ValueError:
        reply = {}
    if out.returncode != 0 or not reply.get("success"):
        raise RuntimeError(f"flwr {' '.join(args)} failed ({out.returncode}): {out.stdout[-1000:]} {out.stderr[-1000:]}")
    return reply


def _wait_listening(host: str, port: int, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until something accepts connections on ``host:port``; RuntimeError when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:.0f} s") from None
            time.sleep(0.2)
    raise RuntimeError(f"start_superlink.sh exited with code {proc.returncode}")


@contextmanager
def local_federation(
    nodes: Sequence[NodeSpec],
    work_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> Iterator[LocalFederation]:
    """Start a SuperLink and ``nodes`` on loopback with TLS and node auth; stop them all on exit.

    ``work_dir`` defaults to a new temporary folder (removed afterwards; a given one is kept).
    """
    own_dir = work_dir is None
    folder = Path(tempfile.mkdtemp(prefix="fedra-deploy-")) if own_dir else Path(work_dir)
    fed = LocalFederation(folder, env)
    try:
        fed.start(nodes, timeout)
        yield fed
    finally:
        fed.stop()
        if own_dir:
            shutil.rmtree(folder, ignore_errors=True)


def _str_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


DEMO_DOMAINS = ("mnist", "printed", "usps", "optdigits", "mnistm", "housenum")  # the compose files' order first


def node_specs(
    capacities: Sequence[int],
    domains: Sequence[str] | None = None,
    data_roots: Sequence[str] | None = None,
    device: str = "cpu",
    threads: int | None = 1,
) -> list[NodeSpec]:
    """One NodeSpec per capacity: image folders (``data_roots``, optionally named by ``domains``)
    or digits domains (``domains``, default ``DEMO_DOMAINS``). ValueError when the counts differ."""
    n = len(capacities)
    if data_roots is not None:
        if len(data_roots) != n:
            raise ValueError(f"--data-roots has {len(data_roots)} folders for {n} capacities: give one per SuperNode")
        if domains is not None and len(domains) != n:
            raise ValueError(f"--domains has {len(domains)} names for {n} folders: give one per SuperNode")
        names = domains or [""] * n
        specs = [NodeSpec(c, data_format="imagefolder", data_root=str(Path(r).resolve()), domain=d, device=device, threads=threads)
                 for c, r, d in zip(capacities, data_roots, names)]
    else:
        if domains is None:
            if n > len(DEMO_DOMAINS):
                raise ValueError(f"{n} capacities but the digits benchmark has {len(DEMO_DOMAINS)} domains: give --domains")
            domains = DEMO_DOMAINS[:n]
        if len(domains) != n:
            raise ValueError(f"--domains has {len(domains)} domains for {n} capacities: give one per SuperNode")
        for d in domains:
            if d not in DEMO_DOMAINS:
                raise ValueError(f"--domains {d!r}: the digits benchmark has {', '.join(DEMO_DOMAINS)}")
        specs = [NodeSpec(c, data_format="digits", domain=d, device=device, threads=threads) for c, d in zip(capacities, domains)]
    keys = [spec.key_name for spec in specs]
    if len(set(keys)) < len(keys):  # e.g. two folders of the same name, or a domain given twice: number the keys
        specs = [replace(spec, name=f"{key}-{i + 1}") for i, (spec, key) in enumerate(zip(specs, keys))]
    return specs


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns ``flwr run``'s exit code (0 with --up after Ctrl-C)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacities", type=_int_list, default=[12, 6, 3], help="blocks per SuperNode (default 12,6,3)")
    parser.add_argument("--domains", type=_str_list, default=None,
                        help="one digits domain per SuperNode (data-format digits; default mnist,printed,usps,...); "
                             "with --data-roots: the folders' names in the tables")
    parser.add_argument("--data-roots", type=_str_list, default=None,
                        help="one image folder per SuperNode (data-format imagefolder: DIR/train/<class>/..., DIR/test/<class>/...)")
    parser.add_argument("--device", default="cpu", help="device of every SuperNode (default cpu)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per SuperNode (default 1)")
    parser.add_argument("--run-config", default="", help='overrides, e.g. "num-server-rounds=5 num-classes=10"')
    parser.add_argument("--output-dir", default=str(REPO / "runs"), help="where the ServerApp writes its outputs")
    parser.add_argument("--work-dir", default=None, help="keep certificates, keys and logs here (default: temporary)")
    parser.add_argument("--timeout", type=float, default=None, help="give up on the run after this many seconds")
    parser.add_argument("--up", action="store_true", help="only bring the federation up and wait for Ctrl-C")
    args = parser.parse_args(argv)
    processes.install_signal_handlers()  # SIGTERM and SIGINT stop the federation as the end of a run does
    try:
        nodes = node_specs(args.capacities, args.domains, args.data_roots, device=args.device, threads=args.threads)
    except ValueError as exc:
        parser.error(str(exc))
    run_config: dict = {"output-dir": str(Path(args.output_dir).resolve())}
    run_config.update(parse_config_args([args.run_config]) if args.run_config else {})
    if not args.up:
        if args.data_roots is None:
            prepare_assets(run_config)  # build the backbone and the digits benchmark once, before the nodes need them
        else:
            from fedra_core import resolve_backbone
            from fedra_core.run_config import load_run_config

            resolve_backbone(load_run_config(run_config).backbone_spec())  # once, not in every node at once
    work_dir = Path(args.work_dir) if args.work_dir else None
    try:
        with local_federation(nodes, work_dir) as fed:
            print(f"SuperLink: Fleet API {fed.address}, Control API {fed.control_address} (TLS, SuperNode auth), "
                  f"{len(nodes)} SuperNodes online; logs in {fed.logs}", flush=True)
            if args.up:
                print(f"use it with: FLWR_HOME={fed.operator_home} flwr run . {fed.connection} --stream", flush=True)
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    return 0
            result = fed.run_app(run_config, timeout=args.timeout, echo=True)
            print(f"run {result.run_id}: {result.status}", flush=True)
            return 0 if result.ok else (result.returncode or 1)
    except (RuntimeError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
