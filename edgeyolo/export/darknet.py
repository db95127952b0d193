"""darknet cfg + weights export, verified by reading both back into a fresh model."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from edgeyolo.contract import Contract, channel_order_for
from edgeyolo.errors import VerificationError
from edgeyolo.fileio import atomic_write_text
from edgeyolo.model.cfg import format_cfg, parse_cfg
from edgeyolo.model.darknet import Darknet
from edgeyolo.model.weights import DarknetHeader, load_darknet_weights, save_darknet_weights


@dataclass(frozen=True)
class DarknetExport:
    cfg: Path
    weights: Path


def export_darknet(
    model: Darknet, out_dir: str | Path, header: DarknetHeader | None = None, contract: Contract | None = None
) -> DarknetExport:
    """``DIR/model.cfg`` + ``DIR/model.weights`` + ``DIR/contract.json`` (the pre/post-processing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = model.cfg.net.height
    contract = contract or Contract(size, model.cfg.net.width, channel_order=channel_order_for(model.cfg.net.channels))
    atomic_write_text(out / "contract.json", contract.to_json())
    cfg_path = atomic_write_text(out / "model.cfg", format_cfg(model.cfg))
    weights_path = save_darknet_weights(model, out / "model.weights", header)
    try:
        fresh = Darknet(parse_cfg(cfg_path))
        load_darknet_weights(fresh, weights_path)
        theirs = fresh.state_dict()
        for key, value in model.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            if not torch.equal(value.detach().float(), theirs[key].float()):
                raise VerificationError(f"{weights_path}: {key} does not read back bit-exactly")
    except BaseException:
        for path in (cfg_path, weights_path, out / "contract.json"):
            path.unlink(missing_ok=True)
        raise
    return DarknetExport(cfg_path, weights_path)
