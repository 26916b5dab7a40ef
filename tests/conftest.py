"""Shared fixtures: an isolated cache, offline hub, tiny real timm backbones with seeded weights."""

from __future__ import annotations

import os
import shutil

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("FEDRA_CACHE"):
    # one cache per pytest-xdist worker (make test runs two): the deployment test hides the digits
    # benchmark from its own worker's processes and checks that none rebuilt it
    os.environ["FEDRA_CACHE"] = os.path.join(os.environ["FEDRA_CACHE"], os.environ["PYTEST_XDIST_WORKER"])
torch.set_num_threads(1)

from bench._common import TINY_VIT  # noqa: E402  (one definition, shared with the benchmarks)
from runners import processes  # noqa: E402

# pytest turns SIGINT into KeyboardInterrupt, but SIGTERM (a time limit, a cancelled CI job) would end
# the session at once, teardowns skipped, leaving the tests' federations running. On either signal:
# stop every process the tests started (runners.processes), then end the session as Ctrl-C does.
processes.install_signal_handlers(keyboard_interrupt=True)

TINY_MIXER = dict(img_size=28, patch_size=7, in_chans=3, embed_dim=32, num_blocks=12, mlp_ratio=(0.5, 4.0))


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory):
    """Point the project's cache at a per-session folder unless the caller chose one."""
    if "FEDRA_CACHE" not in os.environ:
        os.environ["FEDRA_CACHE"] = str(tmp_path_factory.mktemp("fedra-cache"))
    yield


@pytest.fixture(scope="session")
def tiny_vit():
    """A 12-block ViT (width 32) with seeded random weights stored as safetensors."""
    from fedra_core import BackboneSpec, resolve_backbone

    return resolve_backbone(BackboneSpec(name="vit", model_kwargs=TINY_VIT, weights="random", num_classes=10))


@pytest.fixture(scope="session")
def tiny_mixer():
    """A 12-block MLP-Mixer (width 32) with seeded random weights stored as safetensors."""
    from fedra_core import BackboneSpec, resolve_backbone

    return resolve_backbone(BackboneSpec(name="mixer", model_kwargs=TINY_MIXER, weights="random", num_classes=10))


@pytest.fixture
def tensors_read(monkeypatch) -> list[str]:
    """The names of the tensors sub-model builds read from backbone files during the test, in order."""
    import fedra_core.submodel as submodel_mod

    read: list[str] = []
    real_safe_open = submodel_mod.safe_open

    class Recording:
        def __init__(self, *args, **kwargs):
            self.inner = real_safe_open(*args, **kwargs)

        def __enter__(self):
            self.f = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def keys(self):
            return self.f.keys()

        def get_tensor(self, key):
            read.append(key)
            return self.f.get_tensor(key)

    monkeypatch.setattr(submodel_mod, "safe_open", Recording)
    return read


_deployment = None  # the session's SharedFederation once started (see deployment)
_last_deployment_test = None  # the last test of the session that uses it


FEDERATION_GROUP = "shared-federation"  # the pytest-xdist group of the tests that use the shared federation


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(session, config, items):
    """Order and group the tests for ``make test``'s two pytest-xdist workers (``--dist loadgroup
    --no-loadscope-reorder``): the tests that use the shared federation come first and form one group,
    which the first worker takes and runs in order (one real federation at a time); every other test
    file is a group of its own, handed to whichever worker is free."""
    global _last_deployment_test
    users = [item for item in items if "deployment" in getattr(item, "fixturenames", ())]
    _last_deployment_test = users[-1] if users else None
    others = [item for item in items if item not in users]
    for item in users:
        item.add_marker(pytest.mark.xdist_group(FEDERATION_GROUP))
    for item in others:
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    items[:] = users + others


_yielded = False  # this worker lowered its priority (see below)


@pytest.fixture(autouse=True)
def _yield_to_the_shared_federation(request):
    """Under pytest-xdist, a worker running a test outside the shared federation's group lowers its own
    CPU priority (nice 10, for good: a process cannot raise it again), so that on 2 cores the in-process
    tests take what the real federation leaves and do not push its rounds past their timeouts."""
    global _yielded
    if not _yielded and os.environ.get("PYTEST_XDIST_WORKER") and "deployment" not in request.fixturenames:
        os.nice(10)
        _yielded = True
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    if item is _last_deployment_test and _deployment is not None:
        _deployment.stop()  # no later test needs it: stop it now rather than at the end of the session


@pytest.fixture(scope="session")
def deployment(tmp_path_factory):
    """The session's real federation (tests/shared_federation.py): SuperLink with TLS, SuperNode
    authentication and a database, Fleet proxy on 127.0.0.2, three imagefolder SuperNodes. Started on
    first use, shared by the deployment, control-API and fault tests, stopped by process id after the
    last test that uses it (or at the end of the session)."""
    global _deployment
    missing = [tool for tool in ("openssl", "ssh-keygen") if shutil.which(tool) is None]
    assert not missing, f"the deployment tests need {missing} on PATH (Debian: apt-get install openssl openssh-client)"
    if shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin") is None:
        pytest.fail("nginx not found: the Fleet API proxy (deploy/fleet_proxy.sh) needs it; apt-get install nginx-light (.ci/run does)", pytrace=False)
    from shared_federation import SharedFederation

    _deployment = SharedFederation(tmp_path_factory.mktemp("shared-federation"))
    try:
        yield _deployment
    finally:
        _deployment.stop()  # by process id, also after a failed start
        _deployment = None
