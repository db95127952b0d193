"""The Jetson family: TensorRT engines built on the board from the ONNX, power from tegrastats,
the power mode from nvpmodel."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeyolo.targets.families import BASE_TOOLS, FAMILIES, BoardFamily
from edgeyolo.targets.jetson.nvpmodel import parse_nvpmodel
from edgeyolo.targets.jetson.tegrastats import parse_tegrastats, summarize
from edgeyolo.targets.parsing import ToolOutputError

if TYPE_CHECKING:
    from edgeyolo.targets.jetson.engine import EngineResult
    from edgeyolo.targets.transport import LineSink, Transport

log = logging.getLogger(__name__)


@FAMILIES.register("jetson")
class JetsonFamily(BoardFamily):
    """NVIDIA Jetson modules: the host ships the ONNX and the board builds (and caches) its engine,
    because an engine is tied to the GPU and TensorRT version it was built with."""

    native_suffixes = (".engine", ".plan", ".trt")
    builds_engine_on_board = True
    default_user = "jetson"
    needed_tools = BASE_TOOLS | {"tensorrt", "pycuda / cuda-python", "trtexec", "L4T / JetPack"}
    own_tools = frozenset({"tensorrt", "pycuda / cuda-python", "trtexec", "L4T / JetPack", "nvpmodel", "jetson_clocks",
                           "DLA vs profile", "swap"})
    bench_hint = "Benchmark with `sudo nvpmodel -m 0` and `sudo jetson_clocks` first; `doctor` reports both."

    def check_profile(self, profile: Any) -> None:
        if profile.tensorrt is None:
            raise ValueError(f"{profile.name}: a Jetson target needs its TensorRT facts")
        super().check_profile(profile)

    def device_name(self, profile: Any) -> str:
        return profile.name.split("-")[-1]

    def prepare(
        self,
        transport: Transport,
        model: str | Path,
        *,
        precision: str | None = None,
        calib_cache: str | Path | None = None,
        timeout: float = 3600.0,
        on_log: LineSink | None = None,
        trtexec: str | None = None,
    ) -> EngineResult:
        """The board's cached TensorRT engine of the ONNX ``model`` (built with trtexec if missing)."""
        from edgeyolo.targets.jetson.engine import ensure_engine

        return ensure_engine(transport, model, transport.device.target, precision, calib_cache=calib_cache,
                             timeout=timeout, on_log=on_log, trtexec=trtexec, lock=False)

    def power_w(self, record: dict[str, Any]) -> float | None:
        text = record.get("tegrastats")
        if not text:
            return None
        try:
            mw = summarize(parse_tegrastats(text)).power_mw
        except ToolOutputError as exc:
            log.warning("tegrastats output not understood: %s", exc)
            return None
        return mw / 1000.0 if mw else None

    def power_mode(self, board_state: dict[str, Any]) -> str | None:
        nv = board_state.get("nvpmodel") or {}
        if not nv.get("out"):
            return None
        try:
            return parse_nvpmodel(nv["out"]).name
        except ToolOutputError:
            return None
