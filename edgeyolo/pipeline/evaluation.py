"""Helpers of the build's scoring: a model's size, and the host's stand-in for an fp16 engine."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def size_metrics(model, img_size: int) -> dict[str, Any]:
    from edgeyolo.model.cfg import total_bflops

    return {"params": model.parameter_count(), "bflops": round(total_bflops(model.cfg, img_size), 3)}


def fp16_rounded(src: Path, dst: Path) -> Path:
    """A copy of an ONNX file whose float32 initializers went through float16 and back."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(src))
    for init in proto.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16).astype(np.float32), init.name))
    onnx.save(proto, str(dst))
    return dst
