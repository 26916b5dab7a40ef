"""The Docker deployment for real: build the images, bring the compose federation up (TLS and
SuperNode authentication, three SuperNodes that hold 12, 6 and 3 blocks), run two FedRA rounds
with ``deploy/run_app.sh``, check what the ServerApp wrote, tear everything down.

Needs a Docker engine with Compose v2. As root on Debian it installs what is missing: ``docker.io``
(apt), the Compose v2 CLI plugin (apt: a ``docker-compose``/``docker-compose-v2``/
``docker-compose-plugin`` package of major version 2, else the one of Debian 13's ``docker-compose``
package, unpacked into /usr/local/lib/docker/cli-plugins) and starts ``dockerd`` when none answers
(and stops that one, by its PID, at the end). Without Docker the test fails with one line saying
why; ``FEDRA_SKIP_DOCKER=1`` turns that into a skip.

Where Docker Hub cannot be reached, Flower's base images are replaced by the local stand-ins of
``docker/build_base_images.sh`` (``FEDRA_STANDIN_BASES=1`` forces them). Where the PyTorch index
cannot be reached, torch comes from the package index this host's pip uses (``TORCH_INDEX_URL``
overrides). Every image is built with ``--network host``; the federation runs in the host's network
namespace on loopback (deploy/compose.hostnet.yaml), on free ports, under its own compose project,
with certificates, keys and Flower CLI home in a temporary folder. Images stay (docker's layer cache
makes a second run skip the torch install); containers and volumes go (``down -v``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from runners import processes
from server_app.outputs import read_metrics

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # deploy/ is not installed: import it from the checkout
    sys.path.insert(0, str(REPO))
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
COMPOSE_FILES = [DEPLOY / "compose.yaml", DEPLOY / "compose.tls.yaml", DEPLOY / "compose.hostnet.yaml"]
PROJECT_PREFIX = "fedra-compose-test-"
PROJECT = f"{PROJECT_PREFIX}{os.getpid()}"  # one compose project per test process: runs may overlap
IMAGES = {"superlink": "fedra/superlink:flwr1.42.0", "supernode": "fedra/supernode:flwr1.42.0"}
STANDIN = {"superlink": "fedra-base/superlink:1.42.0", "supernode": "fedra-base/supernode:1.42.0"}
NODES = {"supernode-1": ("mnist", 12), "supernode-2": ("printed", 6), "supernode-3": ("usps", 3)}
DOMAINS = {domain for domain, _ in NODES.values()}
RUN_NAME = "compose-e2e"
EVAL_MAX = 100
RUN = {
    "backbone": "vit",
    "backbone-kwargs": json.dumps({"img_size": 28, "patch_size": 7, "embed_dim": 24, "depth": 12, "num_heads": 2, "mlp_ratio": 2.0}),
    "backbone-weights": "random",
    "num-server-rounds": 2,
    "local-steps": 2,
    "batch-size": 16,
    "eval-max-examples": EVAL_MAX,
    "run-name": RUN_NAME,
}
DEBIAN13_SOURCES = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} trixie main\n"
TIMINGS: dict[str, float] = {}


# --- helpers ---------------------------------------------------------------------------------------
def _run(cmd: list[str], timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _ok(cmd: list[str], timeout: float = 60, env: dict | None = None) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _apt_install(*packages: str) -> bool:
    if not (_is_root() and shutil.which("apt-get")):
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if _ok(["apt-get", "install", "-y", "-q", *packages], timeout=900, env=env):
        return True
    _ok(["apt-get", "update", "-q"], timeout=600)
    return _ok(["apt-get", "install", "-y", "-q", *packages], timeout=900, env=env)


def _apt_candidate(package: str) -> str:
    if shutil.which("apt-cache") is None:
        return ""
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True, timeout=60).stdout
    found = re.search(r"Candidate:\s*(\S+)", out)
    return found.group(1) if found and found.group(1) != "(none)" else ""


def _debian_mirror() -> str:
    """The Debian archive this host's apt uses (deb822 or one-line sources), else deb.debian.org."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")) + [Path("/etc/apt/sources.list")]:
        text = path.read_text() if path.is_file() else ""
        for uri in re.findall(r"^URIs:\s*(.+)$", text, re.M) + re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", text, re.M):
            for u in uri.split():
                if re.fullmatch(r"https?://\S+/debian/?", u):
                    return u.rstrip("/")
    return "http://deb.debian.org/debian"


def _install_compose_plugin() -> None:
    """Put a Compose v2 CLI plugin in place with Debian packages only (root)."""
    if not (_is_root() and shutil.which("apt-get")):
        return
    _ok(["apt-get", "update", "-q"], timeout=600)
    for package in ("docker-compose-plugin", "docker-compose-v2", "docker-compose"):  # Docker's, Ubuntu's, Debian 13's
        if _apt_candidate(package).startswith("2.") or re.match(r"\d+:2\.", _apt_candidate(package)):
            if _apt_install(package) and _ok(["docker", "compose", "version"]):
                return
    # Debian 12 only has Compose v1: unpack Debian 13's v2 plugin (a static Go binary, libc only),
    # read from a private apt state that leaves this host's apt sources untouched.
    work = Path(tempfile.mkdtemp(prefix="fedra-compose-deb-"))
    try:
        (work / "lists" / "partial").mkdir(parents=True)
        (work / "cache" / "archives" / "partial").mkdir(parents=True)
        (work / "sources.list").write_text(DEBIAN13_SOURCES.format(mirror=_debian_mirror()))
        opts = [f"-oDir::Etc::SourceList={work / 'sources.list'}", "-oDir::Etc::SourceParts=/dev/null",
                f"-oDir::State::Lists={work / 'lists'}", f"-oDir::Cache={work / 'cache'}", "-oDir::State::status=/dev/null",
                "-oAPT::Sandbox::User=root"]
        _run(["apt-get", *opts, "update", "-q"], timeout=600)
        _run(["apt-get", *opts, "download", "docker-compose"], timeout=600, cwd=work)
        deb = next(work.glob("docker-compose_2*.deb"))
        _run(["dpkg-deb", "-x", str(deb), str(work / "x")])
        plugin = work / "x" / "usr" / "libexec" / "docker" / "cli-plugins" / "docker-compose"
        target = Path("/usr/local/lib/docker/cli-plugins")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(plugin, target / "docker-compose")
        (target / "docker-compose").chmod(0o755)
    except (RuntimeError, StopIteration, OSError, subprocess.TimeoutExpired):
        pass
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("FEDRA_SKIP_DOCKER") == "1":
        pytest.skip(f"Docker unavailable: {reason} (FEDRA_SKIP_DOCKER=1)")
    pytest.fail(f"Docker unavailable: {reason} (set FEDRA_SKIP_DOCKER=1 to skip)", pytrace=False)


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _reachable(url: str, timeout: float = 15) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status == 200
    except Exception:
        return False


def _image_id(image: str) -> str:
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", image], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() if out.returncode == 0 else ""


def _host_pip_index() -> str:
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"]
    out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True, text=True, timeout=60)
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "https://pypi.org/simple"


def _run_config_args(values: dict) -> list[str]:
    """KEY=VALUE arguments of deploy/run_app.sh (strings as TOML literal strings)."""
    out = []
    for key, value in values.items():
        text = repr(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else f"'{value}'"
        out.append(f"{key}={text}")
    return out


def _report(request, line: str) -> None:
    """Print ``line`` on the terminal even under pytest's output capture (build and run timings)."""
    capman = request.config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        print(line, flush=True)
        return
    with capman.global_and_fixture_disabled():
        print(line, flush=True)


# --- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose(request) -> list[str]:
    """``docker compose`` (v2) against a running engine; installs and starts what is missing."""
    if not _ok(["docker", "info"]):
        if (shutil.which("docker") is None or shutil.which("dockerd") is None) and not _apt_install("docker.io"):
            _unavailable("the Docker engine does not answer, and docker.io could not be installed (needs root and apt-get)")
        if shutil.which("docker") is None or shutil.which("dockerd") is None:
            _unavailable("docker or dockerd is still missing after installing docker.io")
        if not _is_root():
            _unavailable("the Docker engine does not answer, and only root may start dockerd here")
        log = open(Path(tempfile.gettempdir()) / "fedra-test-dockerd.log", "ab")
        # SIGTERM, not SIGKILL, if this session dies: the engine shuts its containers down
        proc = processes.start(["dockerd"], stdout=log, stderr=subprocess.STDOUT, death_signal=signal.SIGTERM)

        def stop() -> None:  # only the engine this test started, by its PID
            processes.stop(proc, grace=60)
            log.close()

        request.addfinalizer(stop)
        deadline = time.monotonic() + 90
        while not _ok(["docker", "info"]):
            if proc.poll() is not None:
                _unavailable(f"dockerd exited with code {proc.returncode}; see {log.name}")
            if time.monotonic() > deadline:
                _unavailable(f"dockerd started but did not answer within 90 s; see {log.name}")
            time.sleep(1)
    if _ok(["docker", "compose", "version"]):
        return ["docker", "compose"]
    standalone = subprocess.run(["docker-compose", "version", "--short"], capture_output=True, text=True) if shutil.which("docker-compose") else None
    if standalone is not None and standalone.returncode == 0 and standalone.stdout.strip().lstrip("v").startswith("2."):
        return ["docker-compose"]
    _install_compose_plugin()
    if _ok(["docker", "compose", "version"]):
        return ["docker", "compose"]
    _unavailable("Docker Compose v2 is missing (docker compose) and could not be installed from Debian packages")
    raise AssertionError  # unreachable


@pytest.fixture(scope="module")
def images(request, compose) -> dict[str, str]:
    """The project's two images, built from docker/*.Dockerfile (on stand-in bases where needed)."""
    bases = {}
    for kind in ("superlink", "supernode"):
        text = (REPO / "docker" / f"{kind}.Dockerfile").read_text()
        bases[kind] = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M).group(1)
    # Flower's images when present or pullable; else (or with FEDRA_STANDIN_BASES=1) the stand-ins
    standin = os.environ.get("FEDRA_STANDIN_BASES") == "1" or not all(
        _ok(["docker", "image", "inspect", image]) or _ok(["docker", "pull", image], timeout=900) for image in bases.values())
    if standin:
        if shutil.which("debootstrap") is None and not _apt_install("debootstrap"):
            _unavailable("Flower's base images cannot be pulled, and debootstrap (for the stand-ins) could not be installed")
        start = time.monotonic()
        _run(["bash", str(REPO / "docker" / "build_base_images.sh")], timeout=1800)
        TIMINGS["stand-in bases"] = time.monotonic() - start
        bases = dict(STANDIN)
    torch_index = os.environ.get("TORCH_INDEX_URL") or (
        "" if _reachable("https://download.pytorch.org/whl/cpu/torch/") else _host_pip_index())
    for kind in ("superlink", "supernode"):
        cmd = ["docker", "build", "--network", "host", "--force-rm", "-f", str(REPO / "docker" / f"{kind}.Dockerfile"),
               "--build-arg", f"BASE_IMAGE={bases[kind]}", "-t", IMAGES[kind]]
        if torch_index:
            cmd += ["--build-arg", f"TORCH_INDEX_URL={torch_index}"]
        before = _image_id(IMAGES[kind])
        start = time.monotonic()
        _run([*cmd, str(REPO)], timeout=3600)
        TIMINGS[f"{kind} image"] = time.monotonic() - start
        if before and before != _image_id(IMAGES[kind]):  # rebuilt (pyproject.toml changed): drop the old image
            _ok(["docker", "image", "rm", before])  # refused, harmlessly, while something still uses it
    _report(request, f"\ncompose test: bases {'stand-ins ' + str(list(STANDIN.values())) if standin else str(list(bases.values()))}, "
            f"torch from {torch_index or 'the Dockerfiles default index'}")
    return IMAGES


@pytest.fixture(scope="module")
def federation(request, compose, images, tmp_path_factory) -> dict:
    """SuperLink (TLS, node auth) and the three SuperNodes, registered and online; ``down -v`` after."""
    work = tmp_path_factory.mktemp("compose")
    project_dir = work / "project"  # what compose.tls.yaml's ./certs and ./keys resolve against
    for script, out in (("gen_certs.sh", "certs"), ("gen_node_keys.sh", "keys")):
        _run(["bash", str(DEPLOY / script), "-o", str(project_dir / out)])
    for secret in [project_dir / "certs" / "server.key", *(project_dir / "keys" / n for n in NODES)]:
        if _is_root():
            os.chown(secret, 49999, 49999)  # the containers' user `app`
        else:
            secret.chmod(0o644)
    sl_port, control_port, *node_ports = _free_ports(5)  # Fleet proxy, SuperLink (Control API), nodes
    env = {
        **os.environ,
        "FEDRA_SUPERLINK_PORT": str(sl_port),
        "FEDRA_CONTROL_PORT": str(control_port),
        **{f"FEDRA_SUPERNODE_PORT_{i}": str(p) for i, p in enumerate(node_ports, start=1)},
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(work / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    base = [*compose, "--project-directory", str(project_dir), "-p", PROJECT]
    for f in COMPOSE_FILES:
        base += ["-f", str(f)]
    fed = {"work": work, "project_dir": project_dir, "env": env, "compose": base, "port": control_port, "fleet_port": sl_port,
           "ca": project_dir / "certs" / "ca.crt", "home": work / "flwr-home"}

    def teardown() -> None:
        logs = subprocess.run([*base, "logs", "--no-color", "--timestamps"], capture_output=True, text=True, env=env, timeout=300)
        (work / "compose.log").write_text(logs.stdout + logs.stderr)
        down = subprocess.run([*base, "down", "-v", "--remove-orphans", "--timeout", "30"], capture_output=True, text=True, env=env, timeout=600)
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}"], capture_output=True, text=True, timeout=60)
        vols = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"], capture_output=True, text=True, timeout=60)
        _report(request, f"compose test: down -v exited {down.returncode}; containers left: {left.stdout.split()}, "
                f"volumes left: {vols.stdout.split()}; logs in {work / 'compose.log'}; "
                + ", ".join(f"{k} {v:.0f} s" for k, v in TIMINGS.items()))

    request.addfinalizer(teardown)  # before anything starts: a failed start is torn down too
    _remove_stale_projects()
    start = time.monotonic()
    _run([*base, "up", "-d", "--no-build", "superlink", "fleet-proxy"], env=env, timeout=600)
    flwr_cli = ["bash", str(DEPLOY / "register_nodes.sh"), "--superlink", f"127.0.0.1:{control_port}", "--ca", str(fed["ca"]),
                "--flwr-home", str(fed["home"]), *(str(project_dir / "keys" / f"{n}.pub") for n in NODES)]
    deadline = time.monotonic() + 120
    while True:  # the SuperLink takes a few seconds to listen: retry the registration
        reg = subprocess.run(flwr_cli, capture_output=True, text=True, env=env, timeout=120)
        if reg.returncode == 0:
            break
        _assert_no_exits(fed)
        assert time.monotonic() < deadline, f"registering the SuperNodes failed:\n{reg.stdout[-2000:]}\n{reg.stderr[-2000:]}"
        time.sleep(2)
    _run([*base, "up", "-d", "--no-build"], env=env, timeout=600)
    deadline = time.monotonic() + 180
    while len(online := _online_nodes(fed)) < len(NODES):
        _assert_no_exits(fed)
        assert time.monotonic() < deadline, f"only {len(online)} of {len(NODES)} SuperNodes online after 180 s"
        time.sleep(2)
    TIMINGS["up + register + online"] = time.monotonic() - start
    fed["node_ids"] = {int(n["node-id"]) for n in online}
    return fed


def _remove_stale_projects() -> None:
    """Remove the containers and volumes of earlier runs of this test whose process is gone."""
    label = "com.docker.compose.project"
    for kind in ("ps -a", "volume ls"):
        out = subprocess.run(["docker", *kind.split(), "--filter", f"label={label}", "--format", f'{{{{.Label "{label}"}}}}'],
                             capture_output=True, text=True, timeout=60).stdout
        for project in set(out.split()):
            pid = project.removeprefix(PROJECT_PREFIX)
            if not project.startswith(PROJECT_PREFIX) or not pid.isdigit() or psutil.pid_exists(int(pid)):
                continue
            if kind == "ps -a":
                ids = _run(["docker", "ps", "-aq", "--filter", f"label={label}={project}"]).stdout.split()
                _run(["docker", "rm", "-f", "-v", *ids], check=False)
            else:
                vols = _run(["docker", "volume", "ls", "-q", "--filter", f"label={label}={project}"]).stdout.split()
                _run(["docker", "volume", "rm", "-f", *vols], check=False)


def _flwr_json(fed: dict, *args: str) -> dict:
    from deploy.launch_local import flwr_json

    return flwr_json(str(BIN / "flwr"), args, fed["env"])


def _online_nodes(fed: dict) -> list[dict]:
    return [n for n in _flwr_json(fed, "supernode", "ls", "fedra").get("nodes", []) if n.get("status") == "online"]


def _containers(fed: dict) -> dict[str, dict]:
    """service -> docker inspect's State plus RestartCount, for every container of the project."""
    ids = _run([*fed["compose"], "ps", "-aq"], env=fed["env"]).stdout.split()
    out = {}
    for info in json.loads(_run(["docker", "inspect", *ids]).stdout) if ids else []:
        service = info["Config"]["Labels"].get("com.docker.compose.service", info["Name"])
        out[service] = {**info["State"], "RestartCount": info.get("RestartCount", 0)}
    return out


def _assert_no_exits(fed: dict) -> None:
    for service, state in _containers(fed).items():
        assert state["RestartCount"] == 0 and not (state["Status"] == "exited" and state["ExitCode"] != 0), (
            f"{service}: {state['Status']}, exit code {state['ExitCode']}, {state['RestartCount']} restarts:\n"
            + _run([*fed["compose"], "logs", "--no-color", "--tail", "40", service], env=fed["env"], check=False).stdout)


@pytest.fixture(scope="module")
def run_dir(federation) -> Path:
    """Two FedRA rounds submitted with deploy/run_app.sh; the run folder copied out of the SuperLink."""
    fed = federation
    cmd = ["bash", str(DEPLOY / "run_app.sh"), "--superlink", f"127.0.0.1:{fed['port']}", "--ca", str(fed["ca"]),
           "--flwr-home", str(fed["home"]), *_run_config_args(RUN)]
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=fed["env"], timeout=1800, cwd=fed["work"])
    TIMINGS["run_app (2 rounds)"] = time.monotonic() - start
    output = proc.stdout + proc.stderr
    (fed["work"] / "run_app.log").write_text(output)
    found = re.search(r"started run (\d+)", output)
    assert proc.returncode == 0 and found, f"run_app.sh exited {proc.returncode}:\n{output[-4000:]}"
    runs = _flwr_json(fed, "ls", "fedra", "--run-id", found.group(1)).get("runs", [])
    status = runs[0]["status"] if runs else "unknown"
    # flwr run --stream exits 0 even when the ServerApp fails: ask the SuperLink how the run ended
    assert status == "finished:completed", f"run {found.group(1)} ended {status}:\n{output[-4000:]}"
    out = fed["work"] / "outputs"
    out.mkdir()
    _run([*fed["compose"], "cp", f"superlink:/app/runs/{RUN_NAME}", str(out)], env=fed["env"])
    return out / RUN_NAME


# --- tests -----------------------------------------------------------------------------------------
def test_two_fedra_rounds_over_tls_with_authenticated_supernodes(federation, run_dir: Path) -> None:
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    for r in records:  # every node evaluated the global model on its own domain's test split
        assert set(r["accuracy"]) == DOMAINS, r
        assert all(0.0 <= a <= 1.0 for a in r["accuracy"].values()), r["accuracy"]
        assert all(0 < n <= EVAL_MAX for n in r["examples"].values()), r["examples"]
        assert set(r["eval-nodes"]) == federation["node_ids"] and r["eval-rejected"] == {}
    for r in records[1:]:  # each of the three authenticated SuperNodes trained and was accepted
        assert set(r["node-ids"]) == federation["node_ids"], (r["node-ids"], federation["node_ids"])
        assert set(r["accepted"]) == federation["node_ids"] and r["rejected"] == {}, r
        assert sorted(r["node-labels"]) == sorted(f"{d} ({c} blocks)" for d, c in NODES.values())
        assert sorted(r["capacities"]) == sorted(c for _, c in NODES.values())
        assert [sum(row) for row in r["allocation"]] == r["capacities"]


def test_exported_adapter_loads(run_dir: Path) -> None:
    from safetensors import safe_open

    adapter = run_dir / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config.get("peft_type") == "LORA", config
    with safe_open(str(adapter / "adapter_model.safetensors"), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    lora_b = {k: v for k, v in tensors.items() if "lora_B" in k}
    assert lora_b and any("lora_A" in k for k in tensors), sorted(tensors)[:10]
    assert any(abs(v).sum() > 0 for v in lora_b.values()), "no LoRA B matrix moved from zero in two rounds"


def test_no_container_exited_or_restarted(federation, run_dir: Path) -> None:
    states = _containers(federation)
    assert set(states) == {"superlink", "fleet-proxy", *NODES}, sorted(states)
    _assert_no_exits(federation)
    assert all(s["Status"] == "running" for s in states.values()), {k: s["Status"] for k, s in states.items()}


def test_fleet_port_refuses_the_control_api(federation) -> None:
    """The SuperNodes' port answers only the Fleet API: the flwr CLI's calls get the proxy's 403."""
    import http.client
    import ssl

    context = ssl.create_default_context(cafile=str(federation["ca"]))
    for path, refused in (("/v1/control/list-runs", True), ("/v1/runtime/get-nodes", True), ("/v1/fleet/get-run", False)):
        conn = http.client.HTTPSConnection("127.0.0.1", federation["fleet_port"], context=context, timeout=30)
        try:
            conn.request("POST", path, body=b"", headers={"Content-Type": "application/protobuf"})
            status = conn.getresponse().status
        finally:
            conn.close()
        assert (status == 403) == refused, (path, status)
