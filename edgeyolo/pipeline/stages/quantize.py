"""``quantize``: int8 post-training quantization (int8 precision only), in the target's arithmetic."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeyolo.pipeline.core import Artifact
from edgeyolo.pipeline.stage import BUILD_STAGES, Stage, common_params, needs_data

if TYPE_CHECKING:
    from edgeyolo.pipeline.build import Build


@BUILD_STAGES.register("quantize")
class QuantizeStage(Stage):
    """Skipped where the target's int8 layout is written from the float model at export (host)."""

    name = "quantize"

    def params(self, build: Build) -> dict[str, Any]:
        r = build.recipe
        return {**common_params(build), "images": r.calib_images, "method": r.quant_method, "target": build.profile.name}

    def skip_reason(self, build: Build) -> str | None:
        if build.precision != "int8":
            return f"precision {build.precision}"
        if build.quantizes_at_export():
            return "onnxruntime's quantizer calibrates in the export stage"
        return needs_data(build)

    def run(self, build: Build, art: Artifact, folder: Path) -> tuple[Artifact, dict[str, Any]]:
        from edgeyolo.compress.quant import QuantSpec, calibrate, prepare_qat, save_quantized
        from edgeyolo.model.checkpoint import load_model

        r = build.recipe
        model = load_model(art.cfg, art.weights)
        scheme = build.profile.family_obj.quant_scheme
        if scheme is not None:  # the accelerator's own arithmetic, so the mAP predicts the board's
            spec = QuantSpec(scheme)
        else:
            spec = QuantSpec(scheme="pow2" if build.profile.equal_scales else "affine", equal_scales=build.profile.equal_scales)
        prepare_qat(model, spec)
        calibrate(model, _calibration_batches(build.data(), r.img_size, r.calib_images, model.cfg.net.channels), method=r.quant_method)
        save_quantized(model, folder / "quantized")
        metrics: dict[str, Any] = {"scheme": spec.scheme, "vitis_sim": spec.vitis_sim}
        if build.evaluating():
            metrics.update(build.evaluate_model(model.eval(), backend="torch"))
        return Artifact(art.folder, {"quantized": str(folder / "quantized")}), metrics


def _calibration_batches(data: str, img_size: int, images: int, channels: int):
    """Letterboxed training-split images (never the val split) in batches of 8."""
    from edgeyolo.compress.quant.calib import image_batches
    from edgeyolo.contract import Contract, channel_order_for
    from edgeyolo.data.formats import load_dataset

    contract = Contract(img_size, img_size, channel_order=channel_order_for(channels))
    return image_batches((s.image for s in load_dataset(data, "train").samples[:images]), contract, 8)
