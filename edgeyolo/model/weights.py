"""Darknet ``.weights`` files, read and written byte for byte.

Layout: int32 major, minor, revision; ``seen`` as int64 when major*10+minor >= 2 (and both < 1000),
else int32; then, for every convolutional layer in cfg order: with batch norm β (bias), γ (scale),
running mean, running variance, without it the bias; then the weights (filters × in/groups × k × k).
Nothing else in a YOLO cfg carries weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeyolo.errors import InputFileError, WeightsError
from edgeyolo.fileio import atomic_write_bytes
from edgeyolo.model.darknet import ConvBlock, Darknet


@dataclass(frozen=True)
class DarknetHeader:
    major: int = 0
    minor: int = 2
    revision: int = 5
    seen: int = 0

    @property
    def seen_is_64bit(self) -> bool:
        return (self.major * 10 + self.minor) >= 2 and self.major < 1000 and self.minor < 1000

    @property
    def nbytes(self) -> int:
        return 12 + (8 if self.seen_is_64bit else 4)

    def to_bytes(self) -> bytes:
        head = np.array([self.major, self.minor, self.revision], dtype="<i4").tobytes()
        return head + np.array([self.seen], dtype="<i8" if self.seen_is_64bit else "<i4").tobytes()


def _conv_tensors(block: ConvBlock) -> list[torch.Tensor]:
    """The tensors of one conv layer in file order."""
    parts: list[torch.Tensor] = []
    if block.bn is not None:
        parts += [block.bn.bias, block.bn.weight, block.bn.running_mean, block.bn.running_var]
    else:
        parts.append(block.conv.bias)
    parts.append(block.conv.weight)
    return parts


def layer_floats(block: ConvBlock) -> int:
    return sum(t.numel() for t in _conv_tensors(block))


def expected_bytes(model: Darknet, header: DarknetHeader | None = None, cutoff: int | None = None) -> int:
    header = header or DarknetHeader()
    floats = sum(layer_floats(b) for i, b in model.conv_blocks() if cutoff is None or i < cutoff)
    return header.nbytes + 4 * floats


# Darknet writes version 0.2 (0.1 before 2017) and a small revision; versions over 1000 once flagged
# transposed fully-connected weights. Anything far outside is another kind of file, and reading on
# would only end in "file too long/short for the cfg", which sends the user looking in the wrong place.
_MAX_VERSION = 2000
_MAX_REVISION = 1_000_000


def _file_kind(data: bytes) -> str:
    """What a file that is not darknet weights looks like, for the error message."""
    if data.startswith(b"PK\x03\x04"):
        return " (it is a zip archive, as PyTorch .pt files are: name it .pt)"
    if data.startswith(b"\x80") and len(data) > 1 and data[1] in range(2, 6):
        return " (it is a Python pickle, as old PyTorch .pt files are: name it .pt)"
    if data.startswith(b"\x89PNG") or data.startswith(b"\xff\xd8\xff"):
        return " (it is an image)"
    if len(data) > 9 and data[8:9] == b"{" and int.from_bytes(data[:8], "little") < len(data):
        return " (it looks like a .safetensors checkpoint: name it .safetensors)"
    head = data[:64]
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return " (it is text)"
    return ""


def read_header(data: bytes, path: str) -> DarknetHeader:
    if len(data) < 16:
        raise WeightsError(f"{path}: {len(data)} bytes is too short for a darknet weights header (16 or 20 bytes)")
    major, minor, revision = (int(v) for v in np.frombuffer(data[:12], dtype="<i4"))
    if not (0 <= major < _MAX_VERSION and 0 <= minor < _MAX_VERSION and 0 <= revision < _MAX_REVISION):
        raise WeightsError(
            f"{path}: not a darknet weights header: it reads version {major}.{minor}, revision {revision}, where darknet "
            f"writes 0.2 or 0.1 and a small revision{_file_kind(data)}"
        )
    header = DarknetHeader(major, minor, revision)
    if len(data) < header.nbytes:
        raise WeightsError(f"{path}: truncated header ({len(data)} bytes, expected {header.nbytes})")
    dtype = "<i8" if header.seen_is_64bit else "<i4"
    seen = int(np.frombuffer(data[12 : header.nbytes], dtype=dtype)[0])
    if seen < 0:
        raise WeightsError(
            f"{path}: not a darknet weights header: version {major}.{minor} but a negative count of images seen ({seen})"
            f"{_file_kind(data)}"
        )
    return DarknetHeader(major, minor, revision, seen)


def load_darknet_weights(
    model: Darknet, path: str | Path, cutoff: int | None = None, partial: bool = False
) -> DarknetHeader:
    """Load a darknet weights file into ``model``.

    ``cutoff=N`` loads layers 0..N-1 only (``darknet53.conv.74`` is cutoff 75) and the file must end
    exactly there; ``partial=True`` loads as many whole layers as the file holds. Otherwise the file
    size must match the cfg exactly. The model is only modified once the whole file has been checked.
    """
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"weights file not found: {path}") from None
    except IsADirectoryError:
        raise InputFileError(f"expected a weights file, got a directory: {path}") from None
    header = read_header(data, path)
    offset = header.nbytes
    blocks = [(i, b) for i, b in model.conv_blocks() if cutoff is None or i < cutoff]
    pending: list[tuple[torch.Tensor, np.ndarray]] = []
    loaded = 0
    for index, block in blocks:
        need = 4 * layer_floats(block)
        if offset + need > len(data):
            if partial and offset == len(data):
                break
            total = expected_bytes(model, header, cutoff)
            hint = " (use --cutoff N or --partial for backbone-only files)" if cutoff is None and not partial else ""
            raise WeightsError(
                f"{path}: file too short for the cfg: expected {total} bytes, got {len(data)}; "
                f"ran out in layer {index} (convolutional, needs {need} bytes at offset {offset}, "
                f"{len(data) - offset} left){hint}"
            )
        for tensor in _conv_tensors(block):
            n = tensor.numel()
            values = np.frombuffer(data, dtype="<f4", count=n, offset=offset)
            pending.append((tensor, values.reshape(tuple(tensor.shape))))
            offset += 4 * n
        loaded += 1
    if offset != len(data):  # with partial too: bytes past the last layer mean another cfg's file
        extra = len(data) - offset
        cause = (
            f"the file holds more than the layers before --cutoff {cutoff}"
            if cutoff is not None
            else "the weights belong to a different cfg"
        )
        raise WeightsError(
            f"{path}: file too long for the cfg: expected {offset} bytes, got {len(data)} "
            f"({extra} bytes = {extra // 4} floats left after the last convolutional layer "
            f"{blocks[-1][0] if blocks else '-'}); {cause}"
        )
    if loaded == 0 and blocks:
        raise WeightsError(f"{path}: no layer weights found after the header")
    with torch.no_grad():
        for tensor, values in pending:
            tensor.copy_(torch.from_numpy(values.copy()))
    model.darknet_header = header  # type: ignore[attr-defined]
    model.loaded_layers = loaded  # type: ignore[attr-defined]
    return header


def darknet_weights_bytes(model: Darknet, header: DarknetHeader | None = None, cutoff: int | None = None) -> bytes:
    header = header or getattr(model, "darknet_header", None) or DarknetHeader()
    chunks = [header.to_bytes()]
    for index, block in model.conv_blocks():
        if cutoff is not None and index >= cutoff:
            break
        for tensor in _conv_tensors(block):
            chunks.append(tensor.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4").tobytes())
    return b"".join(chunks)


def save_darknet_weights(
    model: Darknet, path: str | Path, header: DarknetHeader | None = None, cutoff: int | None = None
) -> Path:
    return atomic_write_bytes(Path(path), darknet_weights_bytes(model, header, cutoff))
