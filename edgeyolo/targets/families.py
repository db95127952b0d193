"""Board families: what differs between a Jetson, a Zynq DPU board and a plain CPU host.

A target profile (``edgeyolo.targets.profiles``) is data about one board; its ``family`` names a
:class:`BoardFamily` registered in :data:`FAMILIES`, which holds the behaviour its boards share:
the native artifact a bench prefers, whether (and how) that artifact is built on the board from an
exported file, how power and board state are read, which tool probes ``doctor`` shows and needs,
how ``build`` exports for it, and the defaults its deploy instructions use.

The built-in families live beside their tools (``targets/host.py``, ``targets/jetson/family.py``,
``targets/zynq/family.py``) and are registered when ``edgeyolo.targets`` is imported; a new family
is one subclass and one ``FAMILIES.register(name)``, after which profiles can name it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from edgeyolo.errors import UsageError
from edgeyolo.registry import Registry

# doctor rows every board needs, whatever its family (and all an unknown board is held to)
BASE_TOOLS = frozenset({"ssh", "python", "numpy", "opencv", "disk"})


class Family:
    """The built-in families' names (a profile's ``family`` is the registered name, a plain string)."""

    JETSON = "jetson"
    ZYNQ = "zynq"
    HOST = "host"


class BoardFamily:
    """What the boards of one family share. Subclasses override the attributes and methods in which
    their boards differ; the defaults describe a board that runs the exported ONNX as it is."""

    # artifacts a bench runs in preference to an ONNX when a deployed bundle holds one
    native_suffixes: tuple[str, ...] = ()
    # the board reads an int8 model as an ONNX with Q/DQ nodes, so an int8 profile names its layout
    int8_from_onnx: bool = True
    # an ONNX is turned into the board's native artifact on the board itself (TensorRT's engine)
    builds_engine_on_board: bool = False
    # what ``build``'s export stage makes for it: "onnx", or "vitis" (a bundle for the Vitis AI image)
    export_format: str = "onnx"
    # the registered quantization scheme ``build``'s quantize stage uses for the accelerator's own int8
    # arithmetic (the DPU's: "vitis-sim"); None: affine, or pow2 where the profile needs equal scales
    quant_scheme: str | None = None
    # a compile step on the host between export and deploy, as a command line; None: deploy the export
    compile_command: str | None = None
    # deploy defaults for a board description in devices.yaml
    default_user: str = "root"
    # doctor rows: those the board cannot deploy or bench without, and those only this family shows
    needed_tools: frozenset[str] = BASE_TOOLS
    own_tools: frozenset[str] = frozenset()
    # a line for people before benchmarking (power modes, clocks); None: nothing to say
    bench_hint: str | None = None

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # ------------------------------------------------------------------ profiles

    def check_profile(self, profile: Any) -> None:
        """Raise ValueError when ``profile`` lacks a fact this family's boards need."""
        if self.int8_from_onnx and "int8" in profile.precisions and profile.int8_layout is None:
            raise ValueError(f"{profile.name}: an int8 target that reads ONNX needs its int8_layout")

    def device_name(self, profile: Any) -> str:
        """The name a board of ``profile`` gets in a devices.yaml written for it."""
        return "board"

    # ------------------------------------------------------------------ the model on the board

    def pick_model(self, remotes: Sequence[str]) -> str:
        """The model file to run among deployed ``remotes``: the native artifact when there is one,
        else the ONNX, else the first."""
        for suffix in self.native_suffixes + (".onnx",):
            for r in remotes:
                if r.lower().endswith(suffix):
                    return r
        return remotes[0]

    def builds_on_board(self, model: str | Path) -> bool:
        """Whether :meth:`prepare` builds the native artifact on the board from this exported file."""
        return self.builds_engine_on_board and Path(model).is_file() and Path(model).suffix.lower() == ".onnx"

    def prepare(
        self,
        transport: Any,  # an edgeyolo.targets.transport.Transport (not imported: transport imports profiles)
        model: str | Path,
        *,
        precision: str | None = None,
        calib_cache: str | Path | None = None,
        timeout: float = 3600.0,
        on_log: Callable[[str], None] | None = None,
        trtexec: str | None = None,
    ) -> Any:
        """The native artifact built on the board from the exported file ``model`` (already uploaded;
        the caller holds the board lock); its ``engine`` is the remote path to run. Families whose
        native artifact is made on the host (a compiled xmodel bundle) or that run the export itself
        (an ONNX) build nothing here: a bench picks their file by :attr:`native_suffixes`."""
        raise UsageError(f"{self.name} boards run the deployed file as it is; nothing is built on the board")

    # ------------------------------------------------------------------ what the board reports

    def power_w(self, record: dict[str, Any]) -> float | None:
        """Board power in watts from an agent ``power`` record, when this family's probe wrote it."""
        return None

    def power_mode(self, board_state: dict[str, Any]) -> str | None:
        """The power mode named in the agent's board state, when this family's probe reported one."""
        return None

    def hidden_tools(self) -> frozenset[str]:
        """doctor rows of the other registered families, which a board of this one does not show."""
        others: set[str] = set()
        for name in FAMILIES.names():
            if name != self.name:
                others |= FAMILIES.get(name).own_tools
        return frozenset(others - self.own_tools)


FAMILIES: Registry[type[BoardFamily]] = Registry("board family")


def get_family(family: Any) -> BoardFamily:
    """The registered family of a profile (or of a family name)."""
    name = str(getattr(family, "family", family))
    return FAMILIES.get(name)(name)


def all_families(first: BoardFamily | None = None) -> list[BoardFamily]:
    """Every registered family, ``first`` leading: whose readers to ask about what a board reported."""
    rest = [get_family(name) for name in FAMILIES.names() if first is None or name != first.name]
    return ([first] if first is not None else []) + rest
