"""Shared fixtures: the real darknet files beside the repo (``../shared`` or $EDGEYOLO_SHARED)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGEYOLO_SHARED", REPO.parent / "shared"))
ZOO = REPO / "edgeyolo" / "model" / "zoo"
DARKNET_CFGS = ("yolov3", "yolov3-spp", "yolov3-tiny", "yolov4", "yolov4-tiny")
OWN_CFGS = ("edgeyolo-res", "edgeyolo-mobile")


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: set EDGEYOLO_SHARED to the folder holding cfg/, models/ and images/")
    return path


def cfg_path(name: str) -> Path:
    return ZOO / f"{name}.cfg" if name in OWN_CFGS else shared_path("cfg", f"{name}.cfg")


@pytest.fixture(scope="session")
def tiny_weights() -> Path:
    return shared_path("models", "yolov3-tiny.weights")


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    return sorted(shared_path("images").glob("*.jpg"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: small convs gain nothing from threads, and on a CPU shared
    with another job intra-op threads spin-wait for each other (measured: 30 sparse-training steps
    took 70 s with 2 threads on 2 loaded cores, 4 s with 1). Use it through
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
