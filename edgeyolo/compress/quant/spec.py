"""The quantization recipe: one frozen, validated value that travels with every quantized artifact."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from edgeyolo.errors import UsageError

SCHEMES = ("affine", "dorefa", "pow2")
# the reference repo's ``--quantized`` numbers (README era): 1 = Google/TF integer QAT, 2 = DoReFa
SCHEME_ALIASES = {"1": "affine", "2": "dorefa", "google": "affine", "fpga": "pow2"}
DPU_LEAKY_SLOPE = 26 / 256  # the only LeakyReLU slope the Xilinx DPU computes (0.1015625)


def parse_scheme(text: str | int) -> str:
    """``affine`` / ``dorefa`` / ``pow2``, or the reference repo's seed numbers ``1`` / ``2``."""
    key = str(text).strip().lower()
    key = SCHEME_ALIASES.get(key, key)
    if key not in SCHEMES:
        raise UsageError(f"unknown quantization scheme '{text}'; expected one of {', '.join(SCHEMES)} (or 1 = affine, 2 = dorefa)")
    return key


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize and how.

    ``affine``: symmetric per-output-channel weights, per-tensor activations, any float scale
    (TensorRT explicit quantization). ``pow2``: per-tensor symmetric power-of-two scales for weights and
    activations (shift-only requantisation). ``dorefa``: the DoReFa formulas, for QAT experiments only
    (its weight grid has no integer zero point, so it has no QDQ export).

    ``vitis_sim`` pins the Xilinx DPU arithmetic and therefore implies ``pow2`` and ``equal_scales``:
    narrow range (−127..127), std_round (half away from zero) for weights and the input image,
    round-half-up for activations, LeakyReLU slope 26/256.
    """

    scheme: str = "affine"
    w_bit: int = 8
    a_bit: int = 8
    bn_fold: bool = False
    vitis_sim: bool = False
    equal_scales: bool = False
    edge_bits: int | None = None  # bits of the image-input conv and the convs feeding [yolo] heads (None: w_bit/a_bit)

    def __post_init__(self) -> None:
        object.__setattr__(self, "scheme", parse_scheme(self.scheme))
        for name in ("w_bit", "a_bit", "edge_bits"):
            bits = getattr(self, name)
            if name == "edge_bits" and bits is None:
                continue
            if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
                raise UsageError(f"{name} must be an integer in 2..16, got {bits!r}")
        if self.vitis_sim:
            if self.scheme == "dorefa":
                raise UsageError("vitis_sim simulates the DPU's power-of-two arithmetic; it cannot be combined with dorefa")
            if (self.w_bit, self.a_bit) != (8, 8):
                raise UsageError(f"vitis_sim means the DPU's 8-bit arithmetic; got w_bit={self.w_bit}, a_bit={self.a_bit}")
            object.__setattr__(self, "scheme", "pow2")
            object.__setattr__(self, "equal_scales", True)

    def at_edges(self) -> "QuantSpec":
        """The spec of the image-input conv and the head convs: ``edge_bits`` for weights and inputs."""
        if self.edge_bits is None:
            return self
        return replace(self, w_bit=self.edge_bits, a_bit=self.edge_bits, edge_bits=None)

    @property
    def per_channel(self) -> bool:
        return self.scheme == "affine"

    @property
    def narrow(self) -> bool:
        return self.vitis_sim

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "QuantSpec":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown quantization settings {unknown}; known: {sorted(known)}")
        return cls(**data)  # type: ignore[arg-type]
