"""Training data: letterboxed, augmented samples whose randomness depends only on (seed, epoch, index).

Geometry is the inference contract's (:class:`edgeyolo.contract.Contract`): darknet letterbox (aspect
kept, integer resized size, centred, grey 0.5 pad), RGB (or gray), ``/ 255``. With augmentation off a
training image is bit-identical to ``Contract(S, S).preprocess`` of the same file, so what the network
learns is what every runtime feeds it.

Pipeline of one sample (``S`` = current input size)::

    read BGR uint8 -> RGB / gray -> resize to the letterbox size (uint8, linear, as the contract)
    -> HSV jitter (uint8 LUTs) -> float32 / 255 -> placed on a 0.5 grey canvas
       (S x S letterbox, or 2S x 2S for a 4-image mosaic)
    -> one random affine (rotate, scale, shear, translate) to S x S, border 0.5 grey
    -> horizontal flip -> tensor [C, S, S]

Boxes follow the same maps (the affine through their 4 corners, then clipped to the image). After a
geometric change a box is dropped when it is under ``MIN_BOX_PX`` wide or high, keeps under
``MIN_AREA_FRAC`` of its area or gets an aspect ratio over ``MAX_ASPECT``.

Every random draw of a sample comes from ``np.random.default_rng(SeedSequence([seed, epoch, index]))``,
never from global state, so a sample is the same whatever the worker count, the batch order or the
process it is produced in: a run killed mid-epoch resumes bit-exactly (:func:`make_loader`'s
``start_batch`` skips the batches already done). Unreadable images never stop an epoch: they are
logged once, counted in :attr:`YoloTrainDataset.bad_images` (shared across loader workers) and
replaced by a grey canvas without objects.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.context
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from edgeyolo.contract import Contract, INTERPOLATIONS, Letterbox, channel_order_for
from edgeyolo.data.types import DetectionDataset, Sample
from edgeyolo.errors import UsageError
from edgeyolo.heap import keep_freed_memory
from edgeyolo.model.io import read_image

log = logging.getLogger(__name__)

PAD_VALUE = 0.5  # darknet's letterbox grey, after / 255; also the affine border
MIN_BOX_PX = 2.0  # after a geometric augmentation, boxes narrower or lower than this are dropped
MIN_AREA_FRAC = 0.10  # ... and boxes keeping less than this share of their (scaled) area
MAX_ASPECT = 100.0  # ... and boxes turned into slivers longer than this ratio
_N_DRAWS = 13  # uniform draws per sample, always all taken so each knob keeps its own stream
_ORDER_KEY = (0x0D7E,)  # spawn key separating the epoch-order stream from per-sample streams


# ------------------------------------------------------------------------------------ settings


# valid range of each strength: (low, high, high included)
_AUG_RANGES: dict[str, tuple[float, float, bool]] = {
    "hsv_h": (0.0, 0.5, True),
    "hsv_s": (0.0, 1.0, True),
    "hsv_v": (0.0, 1.0, True),
    "flip_lr": (0.0, 1.0, True),
    "degrees": (0.0, 180.0, True),
    "translate": (0.0, 0.5, True),
    "scale": (0.0, 1.0, False),  # zoom 1 - scale must stay positive
    "shear": (0.0, 45.0, False),
    "mosaic": (0.0, 1.0, True),
    "min_object_px": (0.0, 1024.0, True),
}

#: which objects ``min_object_px`` protects: this quantile of the training boxes' shorter side (in
#: network-input pixels at the training size). A quantile rather than the minimum, because boxes cut
#: by an image or tile edge are slivers of a few pixels and would forbid any zoom-out at all.
SMALL_OBJECT_QUANTILE = 0.10


@dataclass(frozen=True)
class TrainAugment:
    """Augmentation strengths (Ultralytics' hyper-parameter names and meanings).

    ``hsv_h``: hue shift, a fraction of the hue circle (± this); ``hsv_s`` / ``hsv_v``: saturation /
    value gain 1 ± this; ``flip_lr``: probability of a horizontal flip; ``degrees``: rotation ± this;
    ``translate``: centre shift ± this fraction of the input size; ``scale``: zoom 1 ± this; ``shear``:
    shear ± this many degrees (x and y); ``mosaic``: probability of a 4-image mosaic (a crop of the 2S
    canvas, so objects keep their pixel size); ``min_object_px``: the zoom-out floor — a zoom never
    shrinks the dataset's small objects (:data:`SMALL_OBJECT_QUANTILE` of the box sides) below this
    many pixels (0: no floor). ``enabled=False`` turns everything off (the contract letterbox only).

    Defaults, from the README's 20-epoch ablation on aerial tree tiles (yolov3-tiny ``-pt`` at 416, lr 0.01,
    crowns mostly 15-75 px, mAP@0.5 train / val tiles): ``min_object_px`` 12 keeps the zoom-out of
    ``scale`` 0.5 from taking the small crowns (15 px, the 10 % quantile) under 12 px, about what
    the stride-16 head still places (val 0.114 against 0.090 without the floor, train 0.074 against
    0.084); ``hsv_s`` 0.3 and ``hsv_v`` 0.2, half the Ultralytics 0.7 and 0.4, so the colour of the
    crowns against the grass survives (0.083 / 0.111 with the floor, against 0.074 / 0.114 with the
    stronger colour: a faster fit for the same val). :data:`LEGACY_AUGMENT` keeps the earlier
    strengths for runs made before.
    """

    hsv_h: float = 0.015
    hsv_s: float = 0.3
    hsv_v: float = 0.2
    flip_lr: float = 0.5
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    mosaic: float = 0.0
    min_object_px: float = 12.0
    enabled: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise UsageError(f"augment 'enabled' must be true or false, got {self.enabled!r}")
        for f in fields(self):
            if f.name == "enabled":
                continue
            value = getattr(self, f.name)
            lo, hi, hi_ok = _AUG_RANGES[f.name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"augment '{f.name}' must be a number, got {value!r}")
            if not (lo <= value <= hi if hi_ok else lo <= value < hi):
                bound = "]" if hi_ok else ")"
                raise UsageError(f"augment '{f.name}' must lie in [{lo:g}, {hi:g}{bound}, got {value:g}")

    @classmethod
    def off(cls) -> TrainAugment:
        return cls(enabled=False)

    @classmethod
    def from_dict(cls, values: dict, enabled: bool = True) -> TrainAugment:
        """Strengths by name (the config's ``aug`` dict, ``--aug name=value``), the rest default; an
        unknown name is a :class:`UsageError` naming the known ones."""
        unknown = sorted(set(values) - set(_AUG_RANGES))
        if unknown:
            raise UsageError(f"unknown augmentation '{unknown[0]}'; known: {', '.join(_AUG_RANGES)}")
        return cls(enabled=enabled, **values)

    def zoom_floor(self, small_px: float | None) -> float:
        """The smallest zoom allowed for a dataset whose small objects measure ``small_px``: never
        below ``1 - scale``, and never so low that those objects end under ``min_object_px``
        (capped at 1: a set already below the floor is not zoomed out at all)."""
        low = 1.0 - self.scale
        if self.min_object_px > 0 and small_px:
            low = max(low, min(self.min_object_px / small_px, 1.0))
        return low

    @property
    def active(self) -> bool:
        """True when any augmentation can change a sample."""
        return self.enabled and any(getattr(self, name) > 0 for name in _AUG_RANGES if name != "min_object_px")

    @property
    def affine(self) -> bool:
        return self.enabled and (self.degrees > 0 or self.translate > 0 or self.scale > 0 or self.shear > 0)

    @property
    def hsv(self) -> bool:
        return self.enabled and (self.hsv_h > 0 or self.hsv_s > 0 or self.hsv_v > 0)


#: the strengths every run used before the defaults were chosen for small objects: a run whose
#: config.json predates the ``aug`` field resumes with these, so it continues as it started
LEGACY_AUGMENT: dict[str, float] = {
    "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "flip_lr": 0.5, "degrees": 0.0, "translate": 0.1,
    "scale": 0.5, "shear": 0.0, "mosaic": 0.0, "min_object_px": 0.0,
}
_OFF = TrainAugment.off()


@dataclass(frozen=True)
class _Draws:
    """Every random choice of one sample."""

    mosaic: bool
    flip: bool
    hsv: np.ndarray | None  # (hue shift in OpenCV hue units, saturation gain, value gain)
    angle: float  # degrees, counter-clockwise as cv2.getRotationMatrix2D
    zoom: float
    shear_x: float  # degrees
    shear_y: float
    shift_x: float  # centre position as a fraction of the output size
    shift_y: float
    centre: tuple[float, float]  # mosaic centre as a fraction of the 2S canvas, in [0.25, 0.75]
    partners: tuple[int, ...]  # the mosaic's other images


# ------------------------------------------------------------------------ bad-image bookkeeping


class _BadFlags:
    """One shared byte per sample: set when its image could not be read.

    Lives in shared memory so loader workers (fork, spawn or forkserver) report into the dataset the
    trainer holds; any other pickling (deepcopy, pickle.dumps) takes a private snapshot instead.
    """

    def __init__(self, n: int, initial: bytes | None = None) -> None:
        self._arr = multiprocessing.get_context(WORKER_CONTEXT).Array("b", max(n, 1))
        if initial:
            self._view()[: len(initial)] = np.frombuffer(initial, np.int8)

    def _view(self) -> np.ndarray:
        return np.frombuffer(self._arr.get_obj(), dtype=np.int8)

    def mark(self, index: int) -> bool:
        """Flag ``index``; True the first time (anywhere), so the caller warns once."""
        with self._arr.get_lock():
            if self._arr[index]:
                return False
            self._arr[index] = 1
            return True

    def count(self) -> int:
        with self._arr.get_lock():
            return int(self._view().sum())

    def indices(self) -> list[int]:
        with self._arr.get_lock():
            return [int(i) for i in np.flatnonzero(self._view())]

    def __getstate__(self) -> dict:
        if multiprocessing.context.get_spawning_popen() is not None:  # a worker being started
            return {"arr": self._arr}
        with self._arr.get_lock():
            return {"n": len(self._arr), "flags": self._view().tobytes()}

    def __setstate__(self, state: dict) -> None:
        if "arr" in state:
            self._arr = state["arr"]
        else:
            self.__init__(state["n"], state["flags"])


# ------------------------------------------------------------------------------------ image cache


class ImageCache:
    """Every decoded image of a dataset in one flat file, memory-mapped read-only.

    The images are decoded once, in order, straight into the file (never all in Python memory at
    once); entry ``i`` is a view of the mapped file, so loader workers — spawned or forked — share
    the same pages through the OS page cache instead of each holding a copy, and pickling the cache
    to a worker sends only the file name and the offsets. The file lives in ``/dev/shm`` when that
    has room, else in the temp folder, and is removed when the owning process drops the cache.
    Entries are the exact decoder output (``None`` for an unreadable image), so cached and
    uncached samples are bit-identical.
    """

    def __init__(self, count: int, decode: Callable[[int], np.ndarray | None], size_hint: int = 0) -> None:
        folder = tempfile.mkdtemp(prefix="edgeyolo-cache-", dir=self._folder(size_hint))
        self._finalizer = weakref.finalize(self, shutil.rmtree, folder, True)
        self.path = Path(folder) / "images.u8"
        self.entries: list[tuple[int, tuple[int, ...]] | None] = []
        offset = 0
        try:
            with open(self.path, "wb") as fh:
                for i in range(count):
                    image = decode(i)
                    if image is None:
                        self.entries.append(None)
                        continue
                    image = np.ascontiguousarray(image, dtype=np.uint8)
                    fh.write(image.data)
                    self.entries.append((offset, image.shape))
                    offset += image.nbytes
        except OSError as exc:
            self._finalizer()
            raise UsageError(f"cannot build the image cache in {folder}: {exc}; train without --cache or free space") from None
        self.nbytes = offset
        self._map: np.ndarray | None = None

    @staticmethod
    def _folder(size_hint: int) -> str | None:
        shm = "/dev/shm"
        try:
            if os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 1.25 * size_hint + 2**26:
                return shm
        except OSError:
            pass
        return None

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> np.ndarray | None:
        entry = self.entries[index]
        if entry is None:
            return None
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if self.nbytes else np.zeros(0, np.uint8)
        offset, shape = entry
        return self._map[offset : offset + math.prod(shape)].reshape(shape)

    def __getstate__(self) -> dict:
        # a copy (a loader worker) reads the owner's file; only the owner removes it
        return {"path": self.path, "entries": self.entries, "nbytes": self.nbytes}

    def __setstate__(self, state: dict) -> None:
        self.path, self.entries, self.nbytes = state["path"], state["entries"], state["nbytes"]
        self._map = None
        self._finalizer = None


# ------------------------------------------------------------------------------------- dataset


def _contract(size: int, channels: int) -> Contract:
    return Contract(size, size, channel_order=channel_order_for(channels), pad_value=PAD_VALUE)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise UsageError(f"img_size must be an integer, got {size!r}")
    size = int(size)
    if size <= 0 or size % 32:
        raise UsageError(f"img_size must be a positive multiple of 32, got {size}")
    return size


class YoloTrainDataset(Dataset):
    """A :class:`DetectionDataset` as training tensors (see the module doc for the pipeline).

    ``dataset[i]`` (or ``dataset[(i, size)]`` for an explicit input size) returns ``(image, targets,
    i)``: image float32 [C, S, S] in [0, 1] (RGB, or gray when ``channels=1``), targets float32 [n, 5]
    = (class, cx, cy, w, h) normalised by S, in the network input after letterbox and augmentation.

    ``cache=True`` decodes every image once, here, into an :class:`ImageCache` (original-resolution
    uint8 pixels, shared by all loader workers), so cached and uncached samples are bit-identical.
    """

    def __init__(
        self,
        dataset: DetectionDataset,
        img_size: int,
        augment: TrainAugment | None,
        seed: int = 0,
        cache: bool = False,
        channels: int = 3,
        plain_from: int | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise UsageError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
        if not dataset.samples:
            raise UsageError(f"the training set {dataset.source or ''} holds no images; check the split's paths")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
        self.samples: list[Sample] = list(dataset.samples)
        self.names = list(dataset.names)
        self.num_classes = dataset.num_classes
        self.img_size = _check_size(img_size)
        self.augment = augment if augment is not None else TrainAugment.off()
        self.plain_from = plain_from  # epochs from here on are letterbox only (TrainConfig.plain_epochs)
        self.seed = int(seed)
        self.channels = channels
        self.epoch = 0
        self._bad = _BadFlags(len(self.samples))
        self.small_object_px = small_object_px(self.samples, self.img_size, channels)
        self._zoom_low = self.augment.zoom_floor(self.small_object_px)
        self._cache: ImageCache | None = None
        if cache:
            hint = sum(3 * sample.width * sample.height for sample in self.samples)
            self._cache = ImageCache(len(self.samples), self._decode, hint)
            log.info("cached %d training images in %s (%.1f MiB)", len(self._cache), self._cache.path.parent, self._cache.nbytes / 2**20)

    # ---------------------------------------------------------------- state the trainer drives

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` makes. Takes effect in loader workers
        only for loaders created afterwards (:func:`make_loader` calls it)."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise UsageError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)

    def set_img_size(self, size: int) -> None:
        """Input size for later samples. With loader workers it reaches them only when the next loader
        (epoch) starts, since workers hold a copy and prefetch; for per-batch multi-scale with workers
        use ``make_loader(img_sizes=...)``, which is also reproducible."""
        self.img_size = _check_size(size)

    @property
    def bad_images(self) -> int:
        """How many distinct images failed to read so far (in this process and its loader workers)."""
        return self._bad.count()

    @property
    def bad_indices(self) -> list[int]:
        return self._bad.indices()

    def __len__(self) -> int:
        return len(self.samples)

    # ---------------------------------------------------------------- one sample

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """The only source of randomness for ``index`` in ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng(np.random.SeedSequence([self.seed, epoch, index]))

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``key``: an index, ``(index, size)`` or ``(index, size, epoch)``. Carrying the epoch in the
        key lets long-lived (persistent) loader workers serve any epoch without being told."""
        epoch = None
        if isinstance(key, tuple):
            index, size = int(key[0]), _check_size(key[1])
            if len(key) > 2:
                epoch = int(key[2])
        else:
            index, size = int(key), self.img_size
        n = len(self.samples)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"sample index {key} out of range for {n} images")
        image, boxes, classes = self._make(index, size, self.epoch if epoch is None else epoch)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        targets = np.zeros((len(classes), 5), np.float32)
        if len(classes):
            targets[:, 0] = classes
            targets[:, 1] = (boxes[:, 0] + boxes[:, 2]) / (2.0 * size)
            targets[:, 2] = (boxes[:, 1] + boxes[:, 3]) / (2.0 * size)
            targets[:, 3] = (boxes[:, 2] - boxes[:, 0]) / size
            targets[:, 4] = (boxes[:, 3] - boxes[:, 1]) / size
        return image_t, torch.from_numpy(targets), index

    def draws(self, index: int, epoch: int | None = None) -> _Draws:
        """The random choices of ``index`` in ``epoch``: a pure function of (seed, epoch, index)."""
        epoch = self.epoch if epoch is None else epoch
        aug = self.augment if self.plain_from is None or epoch < self.plain_from else _OFF
        rng = self.rng(index, epoch)
        u = rng.random(_N_DRAWS)
        sym = 2.0 * u - 1.0  # uniform in [-1, 1)
        mosaic = aug.enabled and u[0] < aug.mosaic
        partners: tuple[int, ...] = ()
        if mosaic:
            partners = self._partners(rng, index)
        hsv = None
        if aug.hsv:
            hsv = np.array([sym[2] * aug.hsv_h * 180.0, 1.0 + sym[3] * aug.hsv_s, 1.0 + sym[4] * aug.hsv_v])
        on = aug.enabled
        return _Draws(
            mosaic=bool(mosaic),
            flip=bool(on and u[1] < aug.flip_lr),
            hsv=hsv,
            angle=float(sym[5] * aug.degrees) if on else 0.0,
            zoom=self._zoom(aug, u[6], sym[6]) if on else 1.0,
            shear_x=float(sym[7] * aug.shear) if on else 0.0,
            shear_y=float(sym[8] * aug.shear) if on else 0.0,
            shift_x=float(0.5 + sym[9] * aug.translate) if on else 0.5,
            shift_y=float(0.5 + sym[10] * aug.translate) if on else 0.5,
            centre=(float(0.25 + 0.5 * u[11]), float(0.25 + 0.5 * u[12])),
            partners=partners,
        )

    def _zoom(self, aug: TrainAugment, u: float, sym: float) -> float:
        """Zoom from its uniform draw: 1 ± scale, or [floor, 1 + scale] when the small-object floor
        binds (the first form kept as it was, so draws without a floor are unchanged)."""
        if self._zoom_low <= 1.0 - aug.scale:
            return float(1.0 + sym * aug.scale)
        return float(self._zoom_low + u * (1.0 + aug.scale - self._zoom_low))

    def _partners(self, rng: np.random.Generator, index: int) -> tuple[int, ...]:
        """Three other images, distinct while the dataset has enough of them."""
        n = len(self.samples)
        chosen: list[int] = []
        while len(chosen) < min(3, n - 1):
            j = int(rng.integers(n - 1))
            j += j >= index  # skip the sample itself
            if j not in chosen:
                chosen.append(j)
        while len(chosen) < 3:
            chosen.append(int(rng.integers(n)))
        return tuple(chosen)

    def _make(self, index: int, size: int, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = self.draws(index, epoch)
        if d.mosaic:
            canvas, boxes, area0, classes = self._mosaic(index, d, size)
        else:
            canvas, boxes, area0, classes = self._letterboxed(index, d, size)
            if canvas is None:  # unreadable: grey, no objects
                return np.full((size, size, self.channels), PAD_VALUE, np.float32), np.zeros((0, 4)), np.zeros(0)
        m = self._affine_matrix(d, canvas.shape[0], size)
        if not d.mosaic and np.array_equal(m, np.eye(3)):
            image = canvas
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        else:
            image = _warp(canvas, m, size)
            boxes, keep = _transform_boxes(boxes, area0, m, size)
        boxes, classes = boxes[keep], classes[keep]
        if d.flip:  # cv2.flip: the same pixels as image[:, ::-1], copied ~8x faster than numpy
            image = cv2.flip(image, 1).reshape(image.shape)
            boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], axis=1)
        return image, boxes, classes

    # ---------------------------------------------------------------- stages

    def _decode(self, index: int) -> np.ndarray | None:
        return read_image(self.samples[index].image)

    def _read(self, index: int) -> np.ndarray | None:
        image = self._cache[index] if self._cache is not None else self._decode(index)
        if image is None and self._bad.mark(index):
            log.warning(
                "cannot read training image %s; it is replaced by a grey image without objects "
                "(this is reported once per image)",
                self.samples[index].image,
            )
        return image

    def _tile(self, index: int, d: _Draws, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The image fitted into size x size as the contract resizes it (float32 [h, w, C], no pad),
        with its boxes in tile pixels (clipped to the image) and their classes; None if unreadable."""
        bgr = self._read(index)
        if bgr is None:
            return None
        h, w = bgr.shape[:2]
        contract = _contract(size, self.channels)
        new_h, new_w, lb = contract.letterbox_geometry(h, w)
        # the same pixels as Contract.preprocess: gray before the resize, as there (the weighted sum
        # rounds); the colour swap after it, which is exact (resize works per channel) and touches
        # fewer pixels, and folded into the HSV round trip when there is one
        image = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY) if self.channels == 1 else bgr
        if (new_h, new_w) != (h, w):
            image = cv2.resize(image, (new_w, new_h), interpolation=INTERPOLATIONS[contract.interpolation])
        if d.hsv is not None:
            image = _hsv(image, d.hsv, bgr=self.channels == 3)
        elif self.channels == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if image.ndim == 2:
            image = image[:, :, None]
        tile = image.astype(np.float32) * contract.scale
        ann = self.samples[index].annotation
        boxes = ann.boxes.astype(np.float64).reshape(-1, 4)
        boxes = boxes.clip([0.0, 0.0, 0.0, 0.0], [w, h, w, h]) * [lb.scale_x, lb.scale_y, lb.scale_x, lb.scale_y]
        return tile, boxes, ann.classes.astype(np.float64)

    def _letterboxed(self, index: int, d: _Draws, size: int):
        tile = self._tile(index, d, size)
        if tile is None:
            return None, None, None, None
        image, boxes, classes = tile
        h, w = image.shape[:2]
        x0, y0 = (size - w) // 2, (size - h) // 2  # Contract.letterbox_geometry's pads
        canvas = np.full((size, size, self.channels), PAD_VALUE, np.float32)
        canvas[y0 : y0 + h, x0 : x0 + w] = image
        boxes = boxes + [x0, y0, x0, y0]
        return canvas, boxes, _area(boxes), classes

    def _mosaic(self, index: int, d: _Draws, size: int):
        """Four images around a random centre of a 2S x 2S grey canvas (Ultralytics' layout)."""
        s2 = 2 * size
        canvas = np.full((s2, s2, self.channels), PAD_VALUE, np.float32)
        xc, yc = int(d.centre[0] * s2), int(d.centre[1] * s2)
        all_boxes, all_area, all_cls = [], [], []
        for k, idx in enumerate((index, *d.partners)):
            tile = self._tile(idx, d, size)
            if tile is None:
                continue
            image, boxes, classes = tile
            h, w = image.shape[:2]
            if k == 0:  # top left: its bottom-right corner at the centre
                x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
                x1b, y1b = w - (x2a - x1a), h - (y2a - y1a)
            elif k == 1:  # top right
                x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, s2), yc
                x1b, y1b = 0, h - (y2a - y1a)
            elif k == 2:  # bottom left
                x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(s2, yc + h)
                x1b, y1b = w - (x2a - x1a), 0
            else:  # bottom right
                x1a, y1a, x2a, y2a = xc, yc, min(xc + w, s2), min(s2, yc + h)
                x1b, y1b = 0, 0
            canvas[y1a:y2a, x1a:x2a] = image[y1b : y1b + (y2a - y1a), x1b : x1b + (x2a - x1a)]
            boxes = boxes + [x1a - x1b, y1a - y1b, x1a - x1b, y1a - y1b]
            all_area.append(_area(boxes))  # before the tile's crop: what is cut off counts as lost
            all_boxes.append(boxes.clip([x1a, y1a, x1a, y1a], [x2a, y2a, x2a, y2a]))
            all_cls.append(classes)
        if not all_boxes:
            return canvas, np.zeros((0, 4)), np.zeros(0), np.zeros(0)
        return canvas, np.concatenate(all_boxes), np.concatenate(all_area), np.concatenate(all_cls)

    @staticmethod
    def _affine_matrix(d: _Draws, canvas_size: int, size: int) -> np.ndarray:
        """3x3 map from canvas to output coordinates (continuous pixels: pixel i spans [i, i + 1))."""
        centre = np.eye(3)
        centre[:2, 2] = -canvas_size / 2.0
        rot = np.eye(3)
        rot[:2] = cv2.getRotationMatrix2D((0.0, 0.0), d.angle, d.zoom)
        shear = np.eye(3)
        shear[0, 1] = math.tan(math.radians(d.shear_x))
        shear[1, 0] = math.tan(math.radians(d.shear_y))
        shift = np.eye(3)
        shift[:2, 2] = (d.shift_x * size, d.shift_y * size)
        return shift @ shear @ rot @ centre


def small_object_px(samples: Sequence[Sample], size: int, channels: int = 3) -> float | None:
    """The :data:`SMALL_OBJECT_QUANTILE` of the boxes' shorter side in network-input pixels after the
    contract letterbox at ``size`` (None without boxes): the objects the zoom-out floor protects."""
    from edgeyolo.data.formats import read_image_size

    contract = _contract(size, channels)
    sides = []
    for sample in samples:
        boxes = sample.annotation.boxes.reshape(-1, 4)
        if not len(boxes):
            continue
        w, h = sample.width, sample.height
        if not (w and h):
            known = read_image_size(sample.image)
            if known is None:
                continue
            w, h = known
        _, _, lb = contract.letterbox_geometry(h, w)
        sides.append(np.minimum((boxes[:, 2] - boxes[:, 0]) * lb.scale_x, (boxes[:, 3] - boxes[:, 1]) * lb.scale_y))
    if not sides:
        return None
    return float(np.quantile(np.concatenate(sides), SMALL_OBJECT_QUANTILE))


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def _hsv(image: np.ndarray, gains: np.ndarray, bgr: bool = False) -> np.ndarray:
    """HSV jitter of an RGB (``bgr``: BGR in, RGB out; gray: value only) uint8 image through lookup
    tables."""
    x = np.arange(256, dtype=np.float64)
    lut_val = np.clip(np.rint(x * gains[2]), 0, 255).astype(np.uint8)
    if image.ndim == 2:  # gray: V is the gray level, hue and saturation do not exist
        return cv2.LUT(image, lut_val)
    lut_hue = np.mod(np.rint(x + gains[0]), 180).astype(np.uint8)
    lut_sat = np.clip(np.rint(x * gains[1]), 0, 255).astype(np.uint8)
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV if bgr else cv2.COLOR_RGB2HSV))
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _warp(canvas: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    # warpAffine works on pixel-centre indices (pixel i at i); shift the continuous-coordinate map
    a, t = m[:2, :2], m[:2, 2]
    m_idx = np.concatenate([a, (a @ [0.5, 0.5] + t - 0.5)[:, None]], axis=1)
    channels = canvas.shape[2]
    out = cv2.warpAffine(
        canvas,
        m_idx,
        (size, size),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(PAD_VALUE,) * max(channels, 3) if channels > 1 else PAD_VALUE,
    )
    return out[:, :, None] if out.ndim == 2 else out


def _transform_boxes(boxes: np.ndarray, area0: np.ndarray, m: np.ndarray, size: int):
    """Boxes through the affine by their 4 corners, clipped to the output; and which to keep."""
    if not len(boxes):
        return boxes.reshape(0, 4), np.zeros(0, bool)
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)  # [N, 4, (x, y)]
    xy = corners @ m[:2, :2].T + m[:2, 2]
    new = np.concatenate([xy.min(1), xy.max(1)], axis=1).clip(0.0, size)
    w, h = new[:, 2] - new[:, 0], new[:, 3] - new[:, 1]
    det = abs(float(m[0, 0] * m[1, 1] - m[0, 1] * m[1, 0]))
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = (w * h) / (area0 * det)
        aspect = np.maximum(w / h, h / w)
    keep = (w >= MIN_BOX_PX) & (h >= MIN_BOX_PX) & (frac >= MIN_AREA_FRAC) & (aspect <= MAX_ASPECT)
    return new, keep


# ------------------------------------------------------------------------------------- batches


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor, int]]):
    """-> images [B, C, S, S], targets [N, 6] = (batch index, class, cx, cy, w, h), indices [B] int64."""
    images = torch.stack([item[0] for item in batch])
    parts = []
    for i, (_, targets, _) in enumerate(batch):
        parts.append(torch.cat([torch.full((len(targets), 1), float(i), dtype=torch.float32), targets], dim=1))
    targets = torch.cat(parts) if parts else torch.zeros((0, 6), dtype=torch.float32)
    indices = torch.tensor([int(item[2]) for item in batch], dtype=torch.int64)
    return images, targets, indices


class FixedBatches(Sampler):
    """Batches decided up front (the epoch's whole order), so iteration has no randomness of its own.

    ``batches`` may be replaced between epochs: a persistent loader re-reads it on each new iterator.
    """

    def __init__(self, batches: list[list]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list]:
        return iter([list(b) for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


# Workers are spawned, not forked: a process that has already run OpenCV or OpenMP thread pools
# can deadlock its forked children (seen: a loader hung forever inside a long test session).
WORKER_CONTEXT = "spawn"


#: scheduling priority drop of loader workers: when the cores are all busy, the training step's
#: threads run first and the workers fill the gaps (prefetching keeps them ahead), instead of the
#: step's thread pool stalling on a thread a worker has pushed off its core
WORKER_NICE = 10


def worker_init(worker_id: int) -> None:
    # samples take their randomness from (seed, epoch, index); this only keeps stray global use
    # deterministic and stops OpenCV / torch threads from oversubscribing the worker processes
    np.random.seed(torch.initial_seed() % 2**32)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    keep_freed_memory()  # spawned: the trainer's malloc settings are not inherited
    try:
        os.nice(WORKER_NICE)
    except OSError:  # not permitted here; priority is an optimisation only
        pass


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The torch generator an epoch's order comes from: a function of (seed, epoch) only."""
    state = np.random.SeedSequence([int(seed), int(epoch)], spawn_key=_ORDER_KEY).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def make_loader(
    ds: YoloTrainDataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    epoch: int = 0,
    workers: int = 0,
    *,
    drop_last: bool = False,
    start_batch: int = 0,
    img_sizes: Sequence[int] | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader over one epoch: sets ``ds``'s epoch, fixes the order (a permutation drawn from
    :func:`epoch_generator` when ``shuffle``) and yields :func:`collate` batches.

    The batches are identical for any ``workers`` (0 = in this process; otherwise fresh worker
    processes per loader, ``persistent_workers=False``). ``start_batch`` skips the first batches of the
    epoch without loading them (resume). ``img_sizes`` enables multi-scale: each batch gets one size
    from it, drawn from the same generator after the order, so sizes are reproducible too.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise UsageError(f"batch size must be a positive integer, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UsageError(f"workers must be a non-negative integer, got {workers!r}")
    if start_batch < 0:
        raise UsageError(f"start_batch must be >= 0, got {start_batch}")
    ds.set_epoch(epoch)
    n = len(ds)
    g = epoch_generator(seed, epoch)
    order = torch.randperm(n, generator=g).tolist() if shuffle else list(range(n))
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if img_sizes is not None:
        sizes = [_check_size(s) for s in img_sizes]
        if not sizes:
            raise UsageError("img_sizes is empty; give at least one input size or None")
        picks = torch.randint(len(sizes), (len(batches),), generator=g).tolist()
        batches = [[(i, sizes[p]) for i in b] for b, p in zip(batches, picks)]
    return batch_loader(ds, batches[start_batch:], workers, pin_memory=pin_memory, generator=epoch_generator(seed, epoch))


def batch_loader(
    ds: Dataset,
    batches: list[list],
    workers: int,
    *,
    persistent: bool = False,
    pin_memory: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """A loader over fixed ``batches`` of keys with :func:`collate`, spawned workers set up by
    :func:`worker_init`. With ``persistent`` the workers outlive an epoch: replace
    ``loader.batch_sampler.batches`` before iterating it again."""
    return DataLoader(
        ds,
        batch_sampler=FixedBatches(batches),
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        worker_init_fn=worker_init if workers else None,
        generator=generator,
        persistent_workers=persistent and workers > 0,
        multiprocessing_context=WORKER_CONTEXT if workers else None,
    )


# ----------------------------------------------------------------------------------- validation


def letterbox_image(image_bgr: np.ndarray, size: int, channels: int = 3) -> tuple[torch.Tensor, Letterbox]:
    """An image as the network sees it at validation: ``Contract(size, size).preprocess`` as a
    float32 tensor [C, size, size], with the letterbox mapping back to original pixels."""
    if channels not in (1, 3):
        raise UsageError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    blob, box = _contract(_check_size(size), channels).preprocess(image_bgr)
    return torch.from_numpy(blob[0]), box


def letterbox_boxes(boxes_xyxy: np.ndarray, box: Letterbox) -> np.ndarray:
    """Original-pixel xyxy boxes in network-input pixels under ``box`` (the contract's mapping)."""
    b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    return b * [box.scale_x, box.scale_y, box.scale_x, box.scale_y] + [box.pad_x, box.pad_y, box.pad_x, box.pad_y]


__all__ = [
    "LEGACY_AUGMENT",
    "MAX_ASPECT",
    "MIN_AREA_FRAC",
    "MIN_BOX_PX",
    "PAD_VALUE",
    "SMALL_OBJECT_QUANTILE",
    "TrainAugment",
    "YoloTrainDataset",
    "collate",
    "epoch_generator",
    "letterbox_boxes",
    "letterbox_image",
    "make_loader",
    "small_object_px",
]
