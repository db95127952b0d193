"""The Zynq UltraScale+ family: a Xilinx DPU running xmodels compiled on the host in the Vitis AI image."""
from __future__ import annotations

from typing import Any

from edgeyolo.targets.families import BASE_TOOLS, FAMILIES, BoardFamily


@FAMILIES.register("zynq")
class ZynqFamily(BoardFamily):
    """Zynq boards with a DPU: ``build`` exports a Vitis AI bundle, which is quantized and compiled
    for the board's DPU fingerprint in the Vitis AI image; the board runs the bundle's xmodel."""

    native_suffixes = (".xmodel",)
    int8_from_onnx = False  # the DPU reads int8 as an xmodel, never as a Q/DQ ONNX
    export_format = "vitis"
    quant_scheme = "vitis-sim"
    compile_command = "docker/vitis-ai/run.sh BUNDLE"
    needed_tools = BASE_TOOLS | {"vart", "xir", "xdputil"}
    own_tools = frozenset({"vart", "xir", "xdputil", "DPU vs profile"})

    def check_profile(self, profile: Any) -> None:
        if not profile.dpu_images:
            raise ValueError(f"{profile.name}: a DPU target needs at least one board image")
        super().check_profile(profile)
