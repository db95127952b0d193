"""The in-process TensorRT build: API choices per version, and a clear error where tensorrt is absent."""
from __future__ import annotations

import importlib.util

import pytest

from edgeyolo.cli.app import main
from edgeyolo.targets.jetson.engine import BuilderOptions


def test_builder_options_follow_the_tensorrt_api_changes() -> None:
    assert BuilderOptions.for_version("8.2.1.8") == BuilderOptions(explicit_batch_flag=True, memory_pool_api=False)
    assert BuilderOptions.for_version("8.5.2") == BuilderOptions(explicit_batch_flag=True, memory_pool_api=True)
    assert BuilderOptions.for_version("10.3.0") == BuilderOptions(explicit_batch_flag=False, memory_pool_api=True)


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here")
def test_export_engine_without_tensorrt_names_the_extra(tmp_path, capsys) -> None:
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"not used")
    code = main(["export", "engine", "--onnx", str(onnx), "--out", str(tmp_path / "m.engine")])
    assert code == 5
    assert "the optional module 'tensorrt' is not installed" in capsys.readouterr().err
    assert not (tmp_path / "m.engine").exists()
