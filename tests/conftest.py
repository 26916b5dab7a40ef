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


# The test files that run a real TLS federation: the shared one's users, then those with one of their
# own. make test's two pytest-xdist workers run them one file after the other on one worker (see below).
FEDERATION_FILES = ("tests/test_control_api.py", "tests/test_deploy.py", "tests/test_deploy_privacy.py",
                    "tests/test_faults.py", "tests/test_deploy_llm.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items):
    """Run the federation files first, in FEDERATION_FILES' order, and check that the list is whole: a
    test that uses the shared federation or is marked ``federation`` outside it stops the session."""
    users = [item for item in items if _uses_deployment(item)]
    federated = users + [item for item in items if item.get_closest_marker("federation")]
    stray = sorted({item.nodeid.split("::")[0] for item in federated} - set(FEDERATION_FILES))
    if stray:
        raise pytest.UsageError(f"{stray} run a real federation: add them to FEDERATION_FILES in tests/conftest.py")
    order = {name: i for i, name in enumerate(FEDERATION_FILES)}
    items.sort(key=lambda item: order.get(item.nodeid.split("::")[0], len(order)))  # stable: file order otherwise


def _uses_deployment(item: pytest.Item) -> bool:
    return "deployment" in getattr(item, "fixturenames", ())


def pytest_collection_finish(session):
    """Note the last test that uses the shared federation, among those that run (after ``-m``)."""
    global _last_deployment_test
    users = [item for item in session.items if _uses_deployment(item)]
    _last_deployment_test = users[-1] if users else None


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: unknown without it
def pytest_xdist_make_scheduler(config, log):
    """``make test``'s pytest-xdist schedule: one work unit per test file, except that the federation files
    are one unit together, handed out first, so one worker runs them in order (never two real
    federations at once, whose round and query timeouts the fault tests check) while the other worker
    takes the other files one at a time. (xdist's own ``loadgroup`` marks do not group under pytest 9.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FederationFilesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "real-federation" if path in FEDERATION_FILES else path

    config.option.loadscopereorder = False  # keep the collection's order: the federation unit first
    return FederationFilesTogether(config, log)


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
