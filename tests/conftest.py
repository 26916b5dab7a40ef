"""Shared fixtures: an isolated cache, offline hub, tiny real timm backbones with seeded weights."""

from __future__ import annotations

import os

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
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
