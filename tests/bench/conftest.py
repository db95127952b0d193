"""Fixtures shared by the pruning benchmarks' tests."""
from __future__ import annotations

import pytest
import torch

from edgeyolo.cli.common import load_cli_model

SIZE = 64


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module (timings on a shared 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model():
    return load_cli_model("edgeyolo-res", None, random_init=True, img_size=SIZE)
