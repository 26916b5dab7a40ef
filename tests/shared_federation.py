"""One real federation for the deployment tests of a whole pytest session.

``tests/test_control_api.py``, ``tests/test_deploy.py`` and ``tests/test_faults.py`` each used to
bring up a federation of their own (certificates, keys, SuperLink, Fleet proxy, registrations,
SuperNodes); they now share one, started by the first module that asks for it (the ``deployment``
fixture in ``conftest.py``) and stopped by process id at the end of the session:

* a SuperLink with TLS and SuperNode authentication (``deploy/start_superlink.sh`` through
  ``deploy.launch_local``), keeping its state in a SQLite ``--database`` (a killed SuperLink started
  again keeps its runs and registered SuperNodes), the SuperLink itself on 127.0.0.1 (Control and
  Runtime API) and the Fleet API proxy on ``PUBLIC`` (127.0.0.2);
* three SuperNodes (capacities 12, 6, 3), one organisation each, holding only their own folder of
  images (imagefolder layout, one digits domain each: mnist, printed, usps).

Tests may kill, freeze or add processes (the fault tests do); :meth:`SharedFederation.ready`,
called by each module's ``federation`` fixture, first brings the federation back to that state:
extra processes stopped, the SuperLink started again if it is gone, the SuperNodes that died, or
that a test marked ``dirty`` (e.g. one it froze), started again, and exactly the three SuperNodes
online.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # deploy/ is not installed: import it from the checkout
    sys.path.insert(0, str(REPO))

from deploy.launch_local import LocalFederation, NodeSpec  # noqa: E402
from runners import processes  # noqa: E402

PUBLIC = "127.0.0.2"  # the Fleet API proxy's address; the SuperLink itself listens on 127.0.0.1
SITES = [("site-a", "mnist", 12), ("site-b", "printed", 6), ("site-c", "usps", 3)]  # (organisation, domain, capacity)
TEST_IMAGES = 60  # per site
TRAIN_IMAGES = 96


class SharedFederation:
    """The session's federation, started on first use (:meth:`ready`), stopped by :meth:`stop`."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = Path(work_dir)
        self.fed: LocalFederation | None = None
        self.site_folders: dict[str, Path] = {}
        self.specs: list[NodeSpec] = []
        self.dirty: set[str] = set()  # SuperNodes to start again before the next module uses them
        self.failed: str | None = None  # why the start failed: the next modules fail at once with it

    @property
    def names(self) -> list[str]:
        return [spec.key_name for spec in self.specs]

    def ready(self, timeout: float = 180.0) -> LocalFederation:
        """Return the federation with its SuperLink and exactly its three SuperNodes running and online."""
        if self.failed:
            raise RuntimeError(f"the shared federation did not start: {self.failed}")
        try:
            if self.fed is None:
                self._start(timeout)
            else:
                self._heal(timeout)
            # a node stopped without signing off (killed, or hung past the grace period) counts as
            # online until it missed two heartbeats
            deadline = time.monotonic() + timeout
            while len(online := self.fed.online_nodes()) != len(self.specs):
                assert time.monotonic() < deadline, f"{len(online)} SuperNodes online, not {len(self.specs)}: {online}"
                time.sleep(1.0)
        except BaseException as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            raise
        return self.fed

    def _start(self, timeout: float) -> None:
        from app_helpers import write_imagefolder
        from fedra_core.data.digits import build_digits

        build_digits(0)  # the images come from the digits benchmark
        for site, domain, _ in SITES:
            self.site_folders[site] = write_imagefolder(self.work_dir / "sites" / site, domain,
                                                        max_train=TRAIN_IMAGES, max_test=TEST_IMAGES)
        self.specs = [NodeSpec(cap, data_format="imagefolder", data_root=str(self.site_folders[site]), domain=domain, name=site)
                      for site, domain, cap in SITES]
        self.fed = LocalFederation(self.work_dir / "work", public_host=PUBLIC)
        fed = self.fed
        fed.generate_credentials(self.names)
        fed.start_superlink(database=fed.superlink_dir / "state.db")
        fed.register(self.names)
        for spec in self.specs:
            fed.start_supernode(spec)
        fed.wait_for_nodes(len(self.specs), timeout)

    def _heal(self, timeout: float) -> None:
        fed = self.fed
        assert fed is not None
        fed._track()
        for name in [n for n in fed.processes if n != "superlink" and n not in self.names]:  # e.g. misconfigured nodes
            self._stop(name)
        superlink = fed.processes.get("superlink")
        if superlink is None or superlink.poll() is not None:
            if superlink is not None:
                self._stop("superlink")
            fed.start_superlink()  # same ports, same database
        restarted = []
        for spec in self.specs:
            name = spec.key_name
            proc = fed.processes.get(name)
            if name in self.dirty or proc is None or proc.poll() is not None:
                if proc is not None:
                    self._stop(name)  # a graceful stop: the SuperNode signs off at once
                fed.start_supernode(spec)
                restarted.append(spec)
        self.dirty.clear()
        self._connected(restarted, timeout)
        fed.wait_for_nodes(len(self.specs), timeout)

    def _connected(self, specs: list[NodeSpec], timeout: float) -> None:
        """Wait until the SuperNodes of ``specs`` (just started) have a session on the SuperLink. A
        killed node's previous session counts as online until it missed two heartbeats; meanwhile
        the SuperLink refuses the node (Flower's exit code 305): start it again a little later."""
        fed = self.fed
        assert fed is not None
        deadline = time.monotonic() + timeout
        waiting = list(specs)
        while waiting:
            for spec in list(waiting):
                name = spec.key_name
                if "SuperNode ID:" in (fed.logs / f"{name}.log").read_text(errors="replace"):
                    waiting.remove(spec)
                elif fed.processes[name].poll() is not None:
                    assert time.monotonic() < deadline, f"SuperNode {name} refused until {timeout:.0f} s; see {fed.logs / (name + '.log')}"
                    self._stop(name)
                    time.sleep(3)
                    fed.start_supernode(spec)
            assert time.monotonic() < deadline, f"SuperNodes {[s.key_name for s in waiting]} not connected after {timeout:.0f} s"
            time.sleep(0.2)

    def _stop(self, name: str) -> None:
        fed = self.fed
        assert fed is not None
        proc = fed.processes.pop(name)
        fed.nodes.pop(name, None)
        fed._thaw(proc)
        processes.stop(proc)

    def stop(self) -> None:
        if self.fed is not None:
            self.fed.stop()
