"""Fixtures shared by the pruning benchmarks' tests."""
from __future__ import annotations

import pytest

from edgeyolo.cli.common import load_cli_model

SIZE = 64


@pytest.fixture(scope="module")
def model():
    return load_cli_model("edgeyolo-res", None, random_init=True, img_size=SIZE)
