"""The README's plain-Flower commands, run as written: ``flower-superlink`` with TLS and node
authentication, ``ssh-keygen``, ``flwr supernode register``, ``flower-supernode`` with an imagefolder
node-config, ``flwr run``. Only what a user replaces is replaced: the SuperLink's host name (by
127.0.0.1), the data folder, the CA path in the connection, and the run config (a tiny run).
Every process started is stopped by process id."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runners import processes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from app_helpers import write_imagefolder  # noqa: E402
from conftest import TINY_VIT  # noqa: E402
from server_app.outputs import read_metrics

TINY = (
    f"backbone='vit' backbone-weights='random' backbone-kwargs='{json.dumps(TINY_VIT)}' num-server-rounds=1 "
    "local-steps=2 batch-size=16 run-name='plain'"
)


def readme_commands() -> tuple[list[str], list[str]]:
    """Return (commands, connection lines) of the README's 'Without the scripts' bash block."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Without the scripts", 1)[1].split("\n### ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands, connection, current = [], [], ""
    for line in block.splitlines():
        if line.startswith("#   "):
            connection.append(line[4:])
            continue
        stripped = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not stripped:
            continue
        current += stripped.rstrip("\\").strip() + " "
        if not stripped.endswith("\\"):
            commands.append(current.strip())
            current = ""
    keygen = re.search(r"\((ssh-keygen [^)]*)\)", block)
    assert keygen, "the README no longer says how to make a node key"
    return [keygen.group(1), *commands], connection


def test_readme_plain_flower_commands_run_a_round(tmp_path):
    from fedra_core import BackboneSpec, resolve_backbone

    commands, connection = readme_commands()
    by_tool = {c.split()[0] + (" " + c.split()[1] if c.startswith("flwr ") else ""): c for c in commands}
    assert {"ssh-keygen", "flower-superlink", "deploy/fleet_proxy.sh", "flower-supernode", "flwr supernode", "flwr run"} <= set(by_tool), commands
    resolve_backbone(BackboneSpec(name="vit", model_kwargs=TINY_VIT, weights="random", num_classes=10))
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["bash", str(REPO / "deploy" / "gen_certs.sh"), "-o", str(work)], check=True, capture_output=True)
    data = write_imagefolder(tmp_path / "hospital-a", "printed", max_train=40, max_test=30)
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        "\n".join(connection).replace("fl.example.org", "127.0.0.1").replace("/abs/path/ca.crt", str(work / "ca.crt")) + "\n"
    )
    env = {**os.environ, "FLWR_HOME": str(home), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1"}

    def argv(command: str) -> list[str]:
        args = shlex.split(command.replace("fl.example.org", "127.0.0.1").replace("/data/hospital-a", str(data))
                           .replace("--certs DIR", f"--certs {work}").replace("deploy/fleet_proxy.sh", str(REPO / "deploy" / "fleet_proxy.sh")))
        if "--run-config" in args:  # the user's run config: a tiny run here
            args[args.index("--run-config") + 1] = f"{TINY} output-dir='{tmp_path / 'runs'}'"
        return args

    def run(command: str, cwd: Path = work, timeout: float = 120) -> subprocess.CompletedProcess:
        out = subprocess.run(argv(command), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, f"{command}\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
        return out

    started: list[subprocess.Popen] = []
    try:
        run(by_tool["ssh-keygen"])
        log = open(tmp_path / "superlink.log", "w")
        started.append(processes.start(argv(by_tool["flower-superlink"]), cwd=work, env=env, stdout=log,
                                       stderr=subprocess.STDOUT))
        _wait(lambda: _json(run("flwr ls fedra --format json", timeout=30).stdout).get("success", False), 60,
              tmp_path / "superlink.log")
        log = open(tmp_path / "fleet_proxy.log", "w")  # the SuperNodes' only way in (README "Security")
        started.append(processes.start(argv(by_tool["deploy/fleet_proxy.sh"]), cwd=work, env=env, stdout=log,
                                       stderr=subprocess.STDOUT))
        run(by_tool["flwr supernode"])
        log = open(tmp_path / "supernode.log", "w")
        started.append(processes.start(argv(by_tool["flower-supernode"]), cwd=work, env=env, stdout=log,
                                       stderr=subprocess.STDOUT))
        _wait(lambda: _online(run("flwr supernode ls fedra --format json", timeout=30).stdout), 90, tmp_path / "supernode.log")
        out = run(by_tool["flwr run"], cwd=REPO, timeout=600)
        run_id = re.search(r"started run (\d+)", out.stdout + out.stderr).group(1)
        status = _json(run(f"flwr ls fedra --run-id {run_id} --format json", timeout=30).stdout)["runs"][0]["status"]
        assert status == "finished:completed", out.stdout[-3000:]
    finally:
        for proc in reversed(started):
            processes.stop(proc)
    records = read_metrics(tmp_path / "runs" / "plain")
    assert [r["round"] for r in records] == [0, 1]
    assert records[1]["capacities"] == [6] and records[1]["node-labels"] == ["hospital-a (6 blocks)"]
    assert records[1]["examples"] == {"hospital-a": 30}  # evaluated by the node on its own test split


def _online(listing: str) -> bool:
    """True when the SuperLink lists a SuperNode as online."""
    return any(n.get("status") == "online" for n in _json(listing).get("nodes", []))


def _json(stdout: str) -> dict:
    """The JSON reply of ``flwr ... --format json`` (it may print a line before it)."""
    return json.loads(stdout[stdout.index("{"):])


def _wait(check, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (AssertionError, ValueError):
            pass
        time.sleep(1.0)
    raise AssertionError(f"not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
