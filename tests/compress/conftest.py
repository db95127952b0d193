"""Compression tests run single-threaded: their convs are small, and on a CPU shared with another
job torch's intra-op threads spin-wait for each other (measured: a yolov3 forward at 128 px took
2.9 s with 2 threads on 2 busy cores, 0.12 s with 1). Package scope, so that module-scoped model
fixtures are built single-threaded too."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
