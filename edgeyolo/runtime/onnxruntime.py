"""onnxruntime sessions configured the way every edgeyolo caller needs them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def make_session(model: str | Path | bytes, threads: int = 0, optimize: bool = True) -> Any:
    """A CPU session. Worker threads do not spin after a call: with several sessions in one process,
    spinning threads slow the others down by 2x (measured), which would corrupt benchmarks."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:  # the graph as written: no fusions (e.g. a Mul folded into the Conv before it)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def run_session(session: Any, blob: np.ndarray) -> list[np.ndarray]:
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(blob, dtype=np.float32)})
