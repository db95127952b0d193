"""The quantization recipe: one frozen, validated value that travels with every quantized artifact."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from edgeyolo.compress.quant.schemes import (
    DPU_LEAKY_SLOPE,
    SCHEME_ALIASES,
    SCHEMES,
    VITIS_SIM,
    QuantScheme,
    get_scheme,
    parse_scheme,
)
from edgeyolo.errors import UsageError

# the scheme names and parser lived here before the scheme registry: importable from here as before
__all__ = ["DPU_LEAKY_SLOPE", "SCHEMES", "SCHEME_ALIASES", "QuantSpec", "parse_scheme"]


@dataclass(frozen=True)
class QuantSpec:
    """What to quantize and how.

    ``scheme`` names a registered :class:`~edgeyolo.compress.quant.schemes.QuantScheme` (``affine``,
    ``pow2``, ``dorefa``, ``vitis-sim``, ...); :attr:`scheme_obj` is the object the quantizers ask.

    ``vitis_sim`` selects the ``vitis-sim`` scheme (the Xilinx DPU arithmetic) and is how a spec
    records it: ``scheme="vitis-sim"`` becomes ``scheme="pow2", vitis_sim=True, equal_scales=True``,
    as does ``vitis_sim=True`` with any scheme that uses ranges.
    """

    scheme: str = "affine"
    w_bit: int = 8
    a_bit: int = 8
    bn_fold: bool = False
    vitis_sim: bool = False
    equal_scales: bool = False
    edge_bits: int | None = None  # bits of the image-input conv and the convs feeding [yolo] heads (None: w_bit/a_bit)

    def __post_init__(self) -> None:
        name = parse_scheme(self.scheme)
        object.__setattr__(self, "scheme", name)
        for field_name in ("w_bit", "a_bit", "edge_bits"):
            bits = getattr(self, field_name)
            if field_name == "edge_bits" and bits is None:
                continue
            if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
                raise UsageError(f"{field_name} must be an integer in 2..16, got {bits!r}")
        if self.vitis_sim:
            if not SCHEMES.get(name).uses_ranges:
                raise UsageError(f"vitis_sim simulates the DPU's power-of-two arithmetic; it cannot be combined with {name}")
            name = VITIS_SIM
        scheme = get_scheme(name)
        scheme.check(self)
        for field, value in scheme.pinned().items():
            object.__setattr__(self, field, value)

    @property
    def scheme_obj(self) -> QuantScheme:
        """The registered scheme this spec runs (``vitis-sim`` when ``vitis_sim`` is set)."""
        return get_scheme(VITIS_SIM if self.vitis_sim else self.scheme)

    def at_edges(self) -> "QuantSpec":
        """The spec of the image-input conv and the head convs: ``edge_bits`` for weights and inputs."""
        if self.edge_bits is None:
            return self
        return replace(self, w_bit=self.edge_bits, a_bit=self.edge_bits, edge_bits=None)

    @property
    def per_channel(self) -> bool:
        return self.scheme_obj.per_channel

    @property
    def narrow(self) -> bool:
        return self.scheme_obj.narrow

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
