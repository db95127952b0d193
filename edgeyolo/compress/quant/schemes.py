"""Quantization schemes: one registered class per arithmetic, holding everything that differs per scheme.

A scheme decides how a range becomes a scale (activations and weights, per tensor or per output
channel), how values round, the code range, which quantizers exist (the image input, residual adds),
whether ranges are tracked during QAT and set by calibration, which LeakyReLU slope it forces, and
whether it has a QDQ ONNX form. The quantized modules, calibration, the artifacts and the exporters
ask the scheme object (``spec.scheme_obj``) and never compare its name, so a new scheme is one class
and its registration::

    @SCHEMES.register("mine")
    class MyScheme(QuantScheme):
        description = "..."
        def act_scale(self, amax, bits): ...
        def weight_scale(self, w, bits): ...

The registered schemes:

* ``affine`` — symmetric, weights per output channel, activations per tensor, any float scale
  (TensorRT explicit quantization);
* ``pow2`` — per-tensor symmetric power-of-two scales for weights and activations (shift-only
  requantisation);
* ``dorefa`` — the DoReFa formulas, for QAT experiments only: no ranges, no image quantizer, no
  quantized residual adds, and no QDQ export (its weight grid has no integer zero point);
* ``vitis-sim`` — the Xilinx DPU's arithmetic: ``pow2`` scales plus the narrow range −127..127,
  std_round (half away from zero) for weights and the input image, round-half-up for activations,
  LeakyReLU slope 26/256, one scale for both inputs of a residual add, 8 bits only. A
  :class:`QuantSpec` records it as ``scheme="pow2", vitis_sim=True`` (its form before it was a
  scheme), so quantized folders read and write as they did.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

from edgeyolo.compress.quant.fakequant import affine_scale, dorefa_act, dorefa_weight, pow2_scale
from edgeyolo.errors import ExportError, UsageError
from edgeyolo.registry import Registry
from edgeyolo.targets.profiles import DPU_LEAKY_SLOPE  # the only LeakyReLU slope the Xilinx DPU computes

if TYPE_CHECKING:
    from edgeyolo.compress.quant.spec import QuantSpec

VITIS_SIM = "vitis-sim"  # the scheme a spec with ``vitis_sim=True`` runs
# the reference repo's ``--quantized`` numbers (README era): 1 = Google/TF integer QAT, 2 = DoReFa
SCHEME_ALIASES = {"1": "affine", "2": "dorefa", "google": "affine", "fpga": "pow2"}


class QuantScheme(ABC):
    """One quantization arithmetic. Class attributes say what it quantizes; methods compute it.

    Instances are stateless and carry only their registered ``name`` (:func:`get_scheme` makes them).
    """

    description: ClassVar[str] = ""  # one line, for ``edgeyolo quantize --list-schemes``
    label: ClassVar[str | None] = None  # how messages name it (None: its registered name)
    per_channel: ClassVar[bool] = False  # weight scales per output channel (False: one per tensor)
    uses_ranges: ClassVar[bool] = True  # codes on a grid set by a range amax: QAT tracks it, calibration sets it
    quantize_input: ClassVar[bool] = True  # the image entering the first conv is quantized
    quantize_adds: ClassVar[bool] = True  # both inputs of every residual add are quantized
    narrow: ClassVar[bool] = False  # codes −(2^(b−1)−1)..2^(b−1)−1 instead of −2^(b−1)..
    leaky_slope: ClassVar[float | None] = None  # the LeakyReLU slope the arithmetic forces (None: the cfg's)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    @property
    def title(self) -> str:
        return self.label or self.name

    # ------------------------------------------------------------------ arithmetic

    @abstractmethod
    def act_scale(self, amax: Tensor, bits: int) -> Tensor:
        """The per-tensor activation scale for the range ``amax``."""

    @abstractmethod
    def weight_scale(self, w: Tensor, bits: int) -> Tensor:
        """The weight scale of ``w`` (out, in, kh, kw): shape (out, 1, 1, 1) per channel, 0-D per tensor."""

    def rounding(self, role: str) -> str:
        """The rounding mode (``edgeyolo.compress.quant.fakequant``) of ``role``: weight, input or act."""
        return "even"

    def fake_act(self, x: Tensor, bits: int) -> Tensor:
        """Fake-quantized activations of a scheme without ranges (``uses_ranges = False``)."""
        raise NotImplementedError(f"scheme {self.name} quantizes activations through a range")

    def fake_weight(self, w: Tensor, bits: int) -> Tensor:
        """Fake-quantized weights of a scheme without ranges (``uses_ranges = False``)."""
        raise NotImplementedError(f"scheme {self.name} quantizes weights through a range")

    # ------------------------------------------------------------------ calibration, specs, export

    def calibrated_amax(self, obs, method, bits: int) -> float:
        """The range calibration ``method`` (a ``calib.CalibMethod``) picks from histogram ``obs``."""
        return method.amax(obs, bits)

    def check(self, spec: "QuantSpec") -> None:
        """Refuse settings this scheme cannot run (after the generic bit-width checks)."""

    def pinned(self) -> dict[str, object]:
        """Spec fields this scheme fixes, whatever was asked (written back into the spec)."""
        return {}

    def check_qdq(self, spec: "QuantSpec") -> None:
        """Refuse a spec with no QDQ ONNX form (``edgeyolo.export.qdq``) with the way out."""


SCHEMES: Registry[type[QuantScheme]] = Registry("quantization scheme")


@SCHEMES.register("affine")
class AffineScheme(QuantScheme):
    """Symmetric integer quantization with any float scale (TensorRT explicit quantization)."""

    description = "symmetric int, weights per output channel, activations per tensor, float scales (TensorRT, onnxruntime)"
    per_channel = True

    def act_scale(self, amax: Tensor, bits: int) -> Tensor:
        return affine_scale(amax, bits)

    def weight_scale(self, w: Tensor, bits: int) -> Tensor:
        return affine_scale(w.detach().abs().amax(dim=(1, 2, 3)), bits).view(-1, 1, 1, 1)


@SCHEMES.register("dorefa")
class DorefaScheme(QuantScheme):
    """The DoReFa formulas (QAT only): fixed grids, no ranges; the reference leaves the image float and
    its [0, 1] activation clip would kill residuals, so adds stay float too."""

    description = "DoReFa formulas for quantization-aware training experiments (no ranges, no QDQ export)"
    uses_ranges = False
    quantize_input = False
    quantize_adds = False

    def act_scale(self, amax: Tensor, bits: int) -> Tensor:
        raise UsageError("dorefa activations have no scale: they follow the DoReFa formula, not a range")

    def weight_scale(self, w: Tensor, bits: int) -> Tensor:
        raise UsageError("dorefa weights have no scale: they follow the DoReFa formula, not a range")

    def fake_act(self, x: Tensor, bits: int) -> Tensor:
        return dorefa_act(x, bits)

    def fake_weight(self, w: Tensor, bits: int) -> Tensor:
        return dorefa_weight(w, bits)

    def check_qdq(self, spec: "QuantSpec") -> None:
        raise ExportError("DoReFa weights lie on an odd grid with no integer zero point; a dorefa model has no QDQ form")


@SCHEMES.register("pow2")
class Pow2Scheme(QuantScheme):
    """Per-tensor power-of-two scales: requantisation is a shift (the reference's FPGA quantizer).

    Calibration keeps the range a power of two (see :meth:`CalibMethod.pow2_amax
    <edgeyolo.compress.quant.calib.CalibMethod.pow2_amax>`), so the scale is exactly one."""

    description = "per-tensor power-of-two scales for weights and activations (shift-only requantisation)"

    def act_scale(self, amax: Tensor, bits: int) -> Tensor:
        return pow2_scale(amax, bits)

    def weight_scale(self, w: Tensor, bits: int) -> Tensor:
        return pow2_scale(w.detach().abs().max(), bits)

    def calibrated_amax(self, obs, method, bits: int) -> float:
        return method.pow2_amax(obs, bits)


@SCHEMES.register(VITIS_SIM)
class VitisSimScheme(Pow2Scheme):
    """The Xilinx DPU's arithmetic (vai_q_pytorch): ``pow2`` scales, narrow range, its rounding modes,
    LeakyReLU 26/256 and one scale for both inputs of a residual add, at 8 bits."""

    description = "the Xilinx DPU exactly: pow2, range -127..127, its rounding, leaky 26/256, shared add scales (8 bit)"
    label = "vitis-sim (DPU)"
    narrow = True
    leaky_slope = DPU_LEAKY_SLOPE

    def rounding(self, role: str) -> str:
        # std_round (half away from zero) for weights, bias and the image; half up for every activation
        return "up" if role == "act" else "away"

    def check(self, spec: "QuantSpec") -> None:
        if (spec.w_bit, spec.a_bit) != (8, 8):
            raise UsageError(f"vitis_sim means the DPU's 8-bit arithmetic; got w_bit={spec.w_bit}, a_bit={spec.a_bit}")

    def pinned(self) -> dict[str, object]:
        return {"scheme": "pow2", "vitis_sim": True, "equal_scales": True}

    def check_qdq(self, spec: "QuantSpec") -> None:
        raise UsageError(
            "a --vitis-sim model rounds half up as the DPU does, which ONNX QuantizeLinear (half to even) cannot express; "
            "use `edgeyolo export vitis` for the DPU, or quantize without --vitis-sim for TensorRT/onnxruntime"
        )


def scheme_names() -> list[str]:
    """Registered scheme names in registration order (the order messages and help list them)."""
    return [name for name, _ in SCHEMES.in_order()]


def parse_scheme(text: str | int) -> str:
    """A registered scheme name (case-insensitive), or the reference repo's seed numbers ``1`` / ``2``."""
    key = str(text).strip().lower()
    key = SCHEME_ALIASES.get(key, key)
    if key not in SCHEMES:
        raise UsageError(
            f"unknown quantization scheme '{text}'; expected one of {', '.join(scheme_names())} (or 1 = affine, 2 = dorefa)"
        )
    return key


def get_scheme(name: str) -> QuantScheme:
    """The scheme object registered as ``name``."""
    return SCHEMES.get(name)(name)

