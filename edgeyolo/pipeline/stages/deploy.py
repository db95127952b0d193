"""``deploy``: upload and benchmark (FPS, latency, mAP) on a board named in the inventory."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeyolo.errors import UsageError
from edgeyolo.pipeline.core import Artifact
from edgeyolo.pipeline.stage import BUILD_STAGES, Stage, common_params

if TYPE_CHECKING:
    from edgeyolo.pipeline.build import Build


@BUILD_STAGES.register("deploy")
class DeployStage(Stage):
    """Always re-measured: the time of the build is part of its key."""

    name = "deploy"

    def params(self, build: Build) -> dict[str, Any]:
        r = build.recipe
        return {**common_params(build), "device": build.request.device, "duration": r.bench_duration, "at": time.time()}

    def skip_reason(self, build: Build) -> str | None:
        req = build.request
        compile_command = build.profile.family_obj.compile_command
        if req.device and compile_command:
            return f"the xmodel is compiled in the Vitis AI image ({compile_command}); then edgeyolo deploy"
        return None if req.device else "no --device named"

    def run(self, build: Build, art: Artifact, folder: Path) -> tuple[Artifact, dict[str, Any]]:
        from edgeyolo.bench.board import predict_on_device
        from edgeyolo.targets.connect import connect, resolve_device
        from edgeyolo.targets.runner import bench_device

        device = resolve_device(build.request.device, build.request.inventory)
        if device.target not in ("generic", build.profile.name):
            raise UsageError(f"device '{device.name}' is a {device.target} board but the build is for --target {build.profile.name}")
        model = Path(art.files["onnx"])
        with connect(device, trust=build.request.trust_new_host_key, on_stderr=build.echo) as transport:
            bench = bench_device(transport, model, duration=build.recipe.bench_duration, warmup=1.0)
            result = bench.to_dict()
            if bench.error is None and (build.request.data or build.request.demo):
                from edgeyolo.data.formats import load_dataset

                evaluation = predict_on_device(transport, model, load_dataset(build.data(), "val"), "coco")
                result["accuracy"] = evaluation.result.to_dict()
        (folder / "bench.json").write_text(json.dumps(result, indent=1, sort_keys=True, default=str), encoding="utf-8")
        metrics: dict[str, Any] = {"device": device.name, "partial": bench.partial}
        for phase in bench.phases:
            metrics[f"fps_{phase.streams}_streams"] = round(phase.fps, 2)
            metrics[f"latency_p50_ms_{phase.streams}_streams"] = phase.latency_ms.p50
        if "accuracy" in result:  # scored on the host from the board's detections
            metrics["board_map50"] = round(float(result["accuracy"]["map50"]), 4)
            metrics["board_map50_95"] = round(float(result["accuracy"]["map50_95"]), 4)
        return Artifact(art.folder, {**art.files, "bench": str(folder / "bench.json")}), metrics
