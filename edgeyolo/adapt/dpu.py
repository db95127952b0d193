"""The DPU a Vitis AI bundle is compiled for, from a target profile's board images."""
from __future__ import annotations

from typing import TYPE_CHECKING

from edgeyolo.errors import UsageError
from edgeyolo.targets.profiles import get_target

if TYPE_CHECKING:
    from edgeyolo.export.vitis import DpuArch


def dpu_arch(target: str, vai: str | None = None, fingerprint: str | None = None) -> DpuArch:
    """The DPU an ``export vitis`` bundle is compiled for, from the target's board image for Vitis AI
    ``vai``; ``fingerprint`` (read with ``xdputil query`` on the board) overrides the profile's."""
    from edgeyolo.export.vitis import DpuArch  # lazily: the export code imports torch

    profile = get_target(target)
    if not profile.dpu_images:
        raise UsageError(f"--target {target} has no Xilinx DPU; `export vitis` is for zcu104 and ultra96")
    image = profile.dpu_image(vai)
    return DpuArch(profile.name, fingerprint or image.fingerprint_hex, image.label, image.max_pool_kernel, profile.title)
