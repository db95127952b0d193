"""The host family: a CPU running the exported ONNX with onnxruntime, here or on a board's Arm cores."""
from __future__ import annotations

from edgeyolo.targets.families import BASE_TOOLS, FAMILIES, BoardFamily


@FAMILIES.register("host")
class HostFamily(BoardFamily):
    """A CPU with onnxruntime: the exported ONNX is the artifact; nothing is built or compiled for it."""

    needed_tools = BASE_TOOLS | {"onnxruntime"}
