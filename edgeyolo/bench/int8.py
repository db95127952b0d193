"""Host int8 against fp32 in onnxruntime: speed, and how far the int8 detections agree with the float ones.

Both models run with every graph optimization on (the int8 one therefore on the integer kernels it
is timed with), interleaved run by run on the same images. Agreement is mAP@0.5 of the int8
detections (low threshold, the whole precision-recall curve) scored against the float model's
detections at the deployment threshold as ground truth: 1.0 when int8 finds every float box.
The control runs the same int8 file with one quantized tensor's dequantization scale doubled — the
kind of error a layout mismatch makes — for each quantized tensor in turn, to show which such errors
the agreement check catches.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from edgeyolo.contract import Contract, channel_order_for
from edgeyolo.data.types import Annotation

AGREEMENT_GOAL = 0.95  # int8 must find this much of the float model's detections (mAP@0.5)


@dataclass(frozen=True)
class Int8Bench:
    img_size: int
    threads: int
    runs: int
    fp32_ms: tuple[float, float]  # p50, p90 of inference
    int8_ms: tuple[float, float]
    speedup_p50: float
    agreement_map50: float  # int8 detections scored against the float detections
    sabotaged: dict[str, float]  # quantized tensor -> agreement with that tensor's dequantization scale doubled
    reference_boxes: int  # float detections at the deployment threshold, over the scored images
    scored_images: int
    calibration_images: int
    reduce_range: bool
    min_code_match: float

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def caught(self) -> int:
        """Scale errors the agreement check fails on."""
        return sum(v < AGREEMENT_GOAL for v in self.sabotaged.values())


def agreement_map50(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray], num_classes: int) -> float:
    """mAP@0.5 (COCO's 101-point) of ``candidate`` detections against ``reference`` detections as labels."""
    from edgeyolo.train.metrics import evaluate

    truth = [Annotation.of(d[:, :4], d[:, 5]) for d in reference]
    return float(evaluate(truth, list(candidate), num_classes, metric="coco").map50)


def with_scale_error(data: bytes, tensor: str, factor: float = 2.0) -> bytes:
    """The int8 graph with the DequantizeLinear nodes that read ``tensor``'s codes using ``factor`` × its scale."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(data)
    inits = {t.name: t for t in proto.graph.initializer}
    q_out = next(n.output[0] for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == tensor)
    name = f"{tensor}.scale_x{factor:g}"
    changed = 0
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] == q_out:
            if name not in inits:
                value = numpy_helper.to_array(inits[node.input[1]]) * np.float32(factor)
                inits[name] = numpy_helper.from_array(value.astype(np.float32), name)
                proto.graph.initializer.append(inits[name])
            node.input[1] = name
            changed += 1
    if not changed:
        raise ValueError(f"no DequantizeLinear reads the codes of {tensor}")
    return proto.SerializeToString()


def _detect(runner, contract: Contract, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
    out = []
    for frame in frames:
        blob, box = contract.preprocess(frame)
        out.append(contract.postprocess(runner.infer(blob)[0], box))
    return out


def bench_int8(
    model,
    calib_frames: Sequence[np.ndarray],
    scored_frames: Sequence[np.ndarray],
    img_size: int,
    runs: int = 50,
    threads: int = 2,
    calibration: str = "minmax",
    progress: Callable[[range], range] | None = None,
) -> Int8Bench:
    import onnx

    from edgeyolo.bench.host import bench_host
    from edgeyolo.export.host_int8 import activation_quantizers, export_host_int8
    from edgeyolo.export.onnx import export_onnx
    from edgeyolo.model.cfg import total_bflops
    from edgeyolo.runtime.evaluate import evaluation_contract
    from edgeyolo.runtime.runners import OnnxRuntimeRunner

    channels = model.cfg.net.channels
    deploy = Contract(img_size, img_size, channel_order=channel_order_for(channels))
    scoring = evaluation_contract(img_size, channels)
    with tempfile.TemporaryDirectory(prefix="edgeyolo-bench-int8-") as tmp:
        fp32 = OnnxRuntimeRunner(export_onnx(model, Path(tmp) / "fp32.onnx", img_size).path, deploy, threads)
        result = export_host_int8(model, Path(tmp) / "int8.onnx", calib_frames, img_size=img_size, calibration=calibration)
        int8 = OnnxRuntimeRunner(result.path, deploy, threads)
        reference = _detect(fp32, deploy, scored_frames)
        agreement = agreement_map50(reference, _detect(int8, scoring, scored_frames), model.num_classes)
        int8_data = result.path.read_bytes()
        sabotaged = {}
        for tensor in activation_quantizers(onnx.load_from_string(int8_data)):
            broken = Path(tmp) / "broken.onnx"
            broken.write_bytes(with_scale_error(int8_data, tensor))
            with OnnxRuntimeRunner(broken, deploy, threads) as runner:
                sabotaged[tensor] = agreement_map50(reference, _detect(runner, scoring, scored_frames), model.num_classes)
    timed = bench_host({"fp32": fp32, "int8": int8}, deploy, scored_frames, total_bflops(model.cfg, img_size, conv_only=True),
                       runs=runs, warmup=2, threads=threads, progress=progress)
    p = {r.backend: (r.infer.median_ms, r.infer.p90_ms) for r in timed}
    return Int8Bench(
        img_size, threads, runs, p["fp32"], p["int8"], p["fp32"][0] / p["int8"][0], agreement, sabotaged,
        int(sum(len(r) for r in reference)), len(scored_frames), len(calib_frames), result.reduce_range, result.min_code_match,
    )
