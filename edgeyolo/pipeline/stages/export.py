"""``export``: the artifact the target runs: ONNX (fp32/fp16: TensorRT builds the engine on the board),
QDQ ONNX (int8), or the Vitis AI bundle (a Zynq board)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeyolo.errors import UsageError
from edgeyolo.fileio import sha256_file as file_sha256
from edgeyolo.pipeline.core import Artifact
from edgeyolo.pipeline.evaluation import size_metrics
from edgeyolo.pipeline.stage import BUILD_STAGES, Stage, common_params

if TYPE_CHECKING:
    from edgeyolo.pipeline.build import Build


@BUILD_STAGES.register("export")
class ExportStage(Stage):
    """Scores the exported file in an independent runtime, and checks it against what the board parses."""

    name = "export"

    def params(self, build: Build) -> dict[str, Any]:
        r = build.recipe
        return {**common_params(build), "target": build.profile.name, "precision": build.precision,
                **({"images": r.calib_images, "method": r.quant_method} if build.quantizes_at_export() else {})}

    def skip_reason(self, build: Build) -> str | None:
        return None

    def run(self, build: Build, art: Artifact, folder: Path) -> tuple[Artifact, dict[str, Any]]:
        from edgeyolo.adapt.check import check_onnx
        from edgeyolo.export.onnx import DEFAULT_OPSET
        from edgeyolo.model.checkpoint import load_model

        r, p = build.recipe, build.profile
        if p.family_obj.export_format == "vitis":
            return _export_vitis(build, art, folder)
        onnx_path = folder / "model.onnx"
        opset = min(p.tensorrt.max_opset, DEFAULT_OPSET) if p.tensorrt else DEFAULT_OPSET
        qdq = "quantized" in art.files
        if build.quantizes_at_export():
            from edgeyolo.data.formats import load_dataset
            from edgeyolo.export.host_int8 import export_host_int8
            from edgeyolo.model.io import read_image

            if not (build.request.data or build.request.demo):
                raise UsageError(f"{p.name} int8: calibration needs images; give --data (its train split is used)")
            paths = [s.image for s in load_dataset(build.data(), "train").samples[: r.calib_images]]
            frames = [f for f in (read_image(x) for x in paths) if f is not None]
            result = export_host_int8(load_model(art.cfg, art.weights), onnx_path, frames, img_size=r.img_size, calibration=r.quant_method)
            qdq_metrics = {"int8_layout": p.int8_layout, "int8_min_code_match": round(result.min_code_match, 6),
                           "int8_reduce_range": result.reduce_range, "calib_images": len(frames), "calibration": r.quant_method}
        elif qdq:
            from edgeyolo.compress.quant import load_quantized
            from edgeyolo.export.qdq import export_qdq

            export_qdq(load_quantized(art.files["quantized"]), onnx_path, img_size=r.img_size, opset=min(opset, 13))
        else:
            from edgeyolo.export.onnx import export_onnx

            export_onnx(load_model(art.cfg, art.weights), onnx_path, img_size=r.img_size, opset=opset)
        metrics: dict[str, Any] = {"onnx_sha256": file_sha256(onnx_path), "opset": opset}
        if build.quantizes_at_export():
            metrics.update(qdq_metrics)
        if build.evaluating():  # the file the board gets, in an independent runtime
            model = load_model(art.cfg, art.weights)
            metrics.update(build.evaluate_onnx(onnx_path, model.cfg.net.channels, fp16=build.precision == "fp16"))
            metrics.update(size_metrics(model, r.img_size))
        if p.family_obj.builds_engine_on_board:  # what the board's TensorRT parses: opset, IR, operators
            metrics["check_findings"] = len(check_onnx(onnx_path, p).raise_if_failed().findings)
            from edgeyolo.targets.jetson.trtexec import trtexec_command

            command = trtexec_command(p, onnx_path.name, "model.engine", build.precision, qdq=qdq)
            metrics["command.engine"] = command.line
        return Artifact(art.folder, {"onnx": str(onnx_path)}), metrics


def _export_vitis(build: Build, art: Artifact, folder: Path) -> tuple[Artifact, dict[str, Any]]:
    """The Vitis AI bundle (quantized and compiled in the Vitis AI image, not here), with the
    --vitis-sim mAP of the quantize stage as the expected on-board accuracy."""
    from edgeyolo.adapt.dpu import dpu_arch
    from edgeyolo.data.formats import load_dataset
    from edgeyolo.export.vitis import export_vitis
    from edgeyolo.model.checkpoint import load_model

    if not (build.request.data or build.request.demo):
        raise UsageError(f"{build.profile.name}: the Vitis AI bundle needs calibration images; give --data (its train split is used)")
    images = [s.image for s in load_dataset(build.data(), "train").samples[: build.recipe.calib_images + 16]]
    expected = next((r.metrics.get("map50") for r in build.records if r.name == "quantize"), None)
    result = export_vitis(
        load_model(art.cfg, art.weights), folder / "vitis", dpu_arch(build.profile.name), images,
        images=build.recipe.calib_images, img_size=build.recipe.img_size, calib_source=f"{build.data()} (train split)",
        vitis_sim_map=expected,
    )
    metrics = {"bundle": str(result.path), "vitis_sim_map50": expected, "traced_vs_model_rel_error": result.max_rel_error}
    metrics["command.quantize+compile"] = f"docker/vitis-ai/run.sh {folder / 'vitis'} --vai 3.0"
    return Artifact(art.folder, {"vitis": str(folder / "vitis")}), metrics
