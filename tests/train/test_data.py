"""Training data: contract geometry, per-sample determinism, augmentation geometry, loaders."""
from __future__ import annotations

import logging
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edgeyolo.contract import Contract
from edgeyolo.data.formats import load_dataset
from edgeyolo.data.synth import make_synthetic
from edgeyolo.data.types import Annotation, DetectionDataset, Sample
from edgeyolo.errors import UsageError
from edgeyolo.train.data import (
    PAD_VALUE,
    ImageCache,
    TrainAugment,
    YoloTrainDataset,
    collate,
    letterbox_boxes,
    letterbox_image,
    make_loader,
    small_object_px,
)

NO_COLOUR = {"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0}
STILL = {"flip_lr": 0.0, "translate": 0.0, "scale": 0.0, "degrees": 0.0, "shear": 0.0, "mosaic": 0.0}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> DetectionDataset:
    out = tmp_path_factory.mktemp("synth")
    summary = make_synthetic(out, classes=3, train=12, val=4, img_size=128, seed=1)
    return load_dataset(summary.data_yaml, "train")


def hand_dataset(folder: Path, items: list[tuple[np.ndarray | bytes | None, list, list]]) -> DetectionDataset:
    """Samples from (image array | raw bytes | None = missing file, boxes xyxy, classes)."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i, (image, boxes, classes) in enumerate(items):
        path = folder / f"{i:03d}.png"
        h = w = 0
        if isinstance(image, np.ndarray):
            assert cv2.imwrite(str(path), image)
            h, w = image.shape[:2]
        elif isinstance(image, bytes):
            path.write_bytes(image)
        samples.append(Sample(path, path.stem, w, h, Annotation.of(boxes, classes)))
    return DetectionDataset(samples, ["a", "b", "c", "d"], source=str(folder))


def rect_image(w: int, h: int, box: tuple[int, int, int, int], colour=(255, 255, 255)) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = colour
    return image


def xyxy_pixels(targets: torch.Tensor, size: int) -> np.ndarray:
    t = targets.numpy().astype(np.float64)
    cx, cy, w, h = t[:, 1] * size, t[:, 2] * size, t[:, 3] * size, t[:, 4] * size
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


# ------------------------------------------------------------------------------ settings


def test_augment_defaults_and_validation() -> None:
    aug = TrainAugment()
    assert aug.active and aug.hsv and aug.affine and aug.mosaic == 0.0
    assert not TrainAugment.off().active and not TrainAugment(**NO_COLOUR, **STILL).active
    for bad in ({"hsv_s": 1.5}, {"flip_lr": -0.1}, {"scale": 1.0}, {"degrees": float("nan")}, {"mosaic": 2},
                {"shear": 45}, {"translate": "0.1"}, {"enabled": 1}, {"flip_lr": True}):  # fmt: skip
        with pytest.raises(UsageError):
            TrainAugment(**bad)
    with pytest.raises(AttributeError):
        aug.scale = 0.1  # frozen


def test_augment_from_a_dict_names_the_unknown_strength() -> None:
    assert TrainAugment.from_dict({"scale": 0.3}).scale == 0.3
    with pytest.raises(UsageError, match="unknown augmentation 'scal'; known: hsv_h"):
        TrainAugment.from_dict({"scal": 0.3})
    with pytest.raises(UsageError, match="min_object_px"):
        TrainAugment.from_dict({"min_object_px": -1})


def test_dataset_arguments_are_checked(synth: DetectionDataset) -> None:
    for kwargs in ({"img_size": 100}, {"img_size": 128, "channels": 2}, {"img_size": 128, "seed": -1}):
        with pytest.raises(UsageError):
            YoloTrainDataset(synth, augment=None, **kwargs)
    with pytest.raises(UsageError):
        YoloTrainDataset(DetectionDataset([], ["a"]), 128, None)
    ds = YoloTrainDataset(synth, 128, None)
    with pytest.raises(UsageError):
        ds.set_img_size(150)
    with pytest.raises(IndexError):
        ds[len(ds)]


# ------------------------------------------------------------------------- contract geometry


@pytest.mark.parametrize("size", [128, 160])
def test_disabled_augment_is_the_contract_letterbox(synth: DetectionDataset, size: int) -> None:
    ds = YoloTrainDataset(synth, size, TrainAugment.off())
    contract = Contract(size, size)
    for index in (0, 5, 11):
        image, targets, got_index = ds[index]
        sample = synth.samples[index]
        blob, _ = contract.preprocess(cv2.imread(str(sample.image)))
        assert got_index == index and image.dtype == torch.float32 and image.shape == (3, size, size)
        assert torch.equal(image, torch.from_numpy(blob[0]))  # bit-identical to inference preprocessing
        _, _, geo = contract.letterbox_geometry(sample.height, sample.width)
        expected = letterbox_boxes(sample.annotation.boxes, geo)
        assert targets.dtype == torch.float32 and targets.shape == (len(sample.annotation), 5)
        assert np.array_equal(targets[:, 0].numpy(), sample.annotation.classes.astype(np.float32))
        assert np.allclose(xyxy_pixels(targets, size) / size, expected / size, atol=1e-4)


def test_non_square_letterbox_and_gray(tmp_path: Path) -> None:
    image = np.random.default_rng(3).integers(0, 256, (90, 200, 3), dtype=np.uint8)
    data = hand_dataset(tmp_path, [(image, [[10, 5, 60, 80], [150.5, 20.25, 199, 89]], [0, 2])])
    size = 96
    for channels, order in ((3, "rgb"), (1, "gray")):
        ds = YoloTrainDataset(data, size, None, channels=channels)
        got, targets, _ = ds[0]
        contract = Contract(size, size, channel_order=order)
        blob, box = contract.preprocess(image)
        assert got.shape == (channels, size, size) and torch.equal(got, torch.from_numpy(blob[0]))
        assert box.pad_y > 0 and box.pad_x == 0  # letterboxed, not stretched
        _, _, geo = contract.letterbox_geometry(90, 200)
        x1 = np.array([10, 150.5]) * geo.scale_x + geo.pad_x
        y2 = np.array([80, 89]) * geo.scale_y + geo.pad_y
        px = xyxy_pixels(targets, size)
        assert np.allclose(px[:, 0] / size, x1 / size, atol=1e-4)
        assert np.allclose(px[:, 3] / size, y2 / size, atol=1e-4)
    tensor, box = letterbox_image(image, size)
    assert torch.equal(tensor, torch.from_numpy(Contract(size, size).preprocess(image)[0][0]))
    assert box.orig_w == 200 and box.orig_h == 90


# ------------------------------------------------------------------------------ determinism


def test_same_seed_epoch_index_gives_identical_samples(synth: DetectionDataset) -> None:
    aug = TrainAugment(degrees=10, shear=5, mosaic=0.5)
    a = YoloTrainDataset(synth, 128, aug, seed=7)
    b = YoloTrainDataset(synth, 128, aug, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    np.random.seed(0)
    torch.manual_seed(0)
    first = [a[i] for i in range(len(a))]
    np.random.seed(123)  # global RNG state must not matter
    torch.manual_seed(99)
    for i in reversed(range(len(b))):  # nor the access order
        img, tg, idx = b[i]
        assert idx == i and torch.equal(img, first[i][0]) and torch.equal(tg, first[i][1])
    b.set_epoch(4)
    changed = sum(not torch.equal(b[i][0], first[i][0]) for i in range(len(b)))
    assert changed == len(b)  # another epoch, another augmentation
    c = YoloTrainDataset(synth, 128, aug, seed=8)
    c.set_epoch(3)
    assert not torch.equal(c[0][0], first[0][0])


def test_loader_batches_identical_for_any_worker_count(synth: DetectionDataset) -> None:
    ds = YoloTrainDataset(synth, 128, TrainAugment(degrees=5, mosaic=0.5))

    def run(workers: int, epoch: int, **kw):
        return list(make_loader(ds, 5, shuffle=True, seed=11, epoch=epoch, workers=workers, **kw))

    serial, parallel = run(0, 2, img_sizes=[96, 128, 160]), run(2, 2, img_sizes=[96, 128, 160])
    assert len(serial) == len(parallel) == 3
    for (ia, ta, xa), (ib, tb, xb) in zip(serial, parallel):
        assert torch.equal(ia, ib) and torch.equal(ta, tb) and torch.equal(xa, xb)
    sizes = [b[0].shape[-1] for b in serial]
    assert set(sizes) <= {96, 128, 160} and len(set(sizes)) > 1  # multi-scale: one size per batch
    order = torch.cat([b[2] for b in serial])
    assert sorted(order.tolist()) == list(range(12)) and order.tolist() != list(range(12))
    assert ds.epoch == 2
    other = torch.cat([b[2] for b in run(0, 3, img_sizes=[96, 128, 160])])
    assert other.tolist() != order.tolist()  # each epoch its own order
    resumed = run(0, 2, img_sizes=[96, 128, 160], start_batch=1)  # resume after a kill
    for (ia, ta, xa), (ib, tb, xb) in zip(serial[1:], resumed):
        assert torch.equal(ia, ib) and torch.equal(ta, tb) and torch.equal(xa, xb)
    plain = list(make_loader(ds, 5, shuffle=False, epoch=0, drop_last=True))
    assert [b[2].tolist() for b in plain] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


# -------------------------------------------------------------------- augmentation geometry


def test_augmented_box_covers_the_object(tmp_path: Path) -> None:
    box = (40, 20, 100, 70)
    data = hand_dataset(tmp_path, [(rect_image(128, 96, box), [box], [0])])
    aug = TrainAugment(**NO_COLOUR, flip_lr=0.5, degrees=30, translate=0.2, scale=0.5, shear=10)
    ds = YoloTrainDataset(data, 128, aug, seed=5)
    checked = flips = 0
    for epoch in range(40):
        ds.set_epoch(epoch)
        image, targets, _ = ds[0]
        flips += ds.draws(0).flip
        bright = image[0].numpy() > 0.6  # object 1.0, background 0.0, border 0.5
        if len(targets) == 0:
            assert bright.sum() < 0.1 * 60 * 50 * ds.draws(0).zoom ** 2 + 10  # dropped: mostly cut off
            continue
        assert len(targets) == 1
        ys, xs = np.nonzero(bright)
        seen = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)
        assert np.abs(xyxy_pixels(targets, 128)[0] - seen).max() <= 2.0, (epoch, seen)
        checked += 1
    assert checked >= 30 and 5 <= flips <= 35


def test_flip_mirrors_cx(synth: DetectionDataset) -> None:
    plain = YoloTrainDataset(synth, 128, TrainAugment.off())
    flipped = YoloTrainDataset(synth, 128, TrainAugment(**NO_COLOUR, **{**STILL, "flip_lr": 1.0}))
    for i in range(4):
        (ia, ta, _), (ib, tb, _) = plain[i], flipped[i]
        assert torch.equal(ib, ia.flip(-1))
        assert torch.allclose(tb[:, 1], 1.0 - ta[:, 1], atol=1e-6)
        assert torch.equal(tb[:, [0, 2, 3, 4]], ta[:, [0, 2, 3, 4]])


def test_hsv_leaves_geometry_unchanged(tmp_path: Path) -> None:
    image = np.random.default_rng(1).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    data = hand_dataset(tmp_path, [(image, [[10, 10, 50, 40], [60, 5, 120, 60]], [0, 1])])
    plain = YoloTrainDataset(data, 128, None)
    hsv = YoloTrainDataset(data, 128, TrainAugment(hsv_h=0.3, hsv_s=0.9, hsv_v=0.9, **STILL))
    pa, ta, _ = plain[0]
    diffs = 0
    for epoch in range(3):
        hsv.set_epoch(epoch)
        pb, tb, _ = hsv[0]
        assert torch.equal(ta, tb)
        assert torch.all(pb[:, :32] == PAD_VALUE) and torch.all(pb[:, 96:] == PAD_VALUE)  # pad stays grey
        diffs += not torch.equal(pa, pb)
    assert diffs == 3


def test_mosaic_takes_boxes_from_four_images(tmp_path: Path) -> None:
    colours = [(0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255)]  # BGR: red, green, blue, yellow
    sizes = [(64, 64), (80, 48), (48, 96), (64, 64)]
    items = [(rect_image(w, h, (0, 0, w, h), c), [[0, 0, w, h]], [k]) for k, ((w, h), c) in enumerate(zip(sizes, colours))]
    data = hand_dataset(tmp_path, items)
    ds = YoloTrainDataset(data, 128, TrainAugment(**NO_COLOUR, **{**STILL, "mosaic": 1.0}))
    rgb = np.array([c[::-1] for c in colours], np.float32) / 255.0
    best = 0
    for epoch in range(6):
        ds.set_epoch(epoch)
        for index in range(4):
            d = ds.draws(index)
            assert d.mosaic and sorted((index, *d.partners)) == [0, 1, 2, 3]  # four distinct images
            image, targets, _ = ds[index]
            assert image.shape == (3, 128, 128)
            for (x1, y1, x2, y2), cls in zip(xyxy_pixels(targets, 128), targets[:, 0].int().tolist()):
                inner = image[:, int(np.ceil(y1)) + 1 : int(y2) - 1, int(np.ceil(x1)) + 1 : int(x2) - 1]
                if inner.numel():
                    assert np.allclose(inner.mean((1, 2)).numpy(), rgb[cls], atol=0.02)
            best = max(best, len(set(targets[:, 0].int().tolist())))
    assert best == 4


def square_objects(folder: Path, side: int, count: int = 6, size: int = 128) -> DetectionDataset:
    """``count`` images of ``size`` px, each with one white square of ``side`` px in its middle."""
    lo = (size - side) // 2
    box = (lo, lo, lo + side, lo + side)
    return hand_dataset(folder, [(rect_image(size, size, box), [box], [0]) for _ in range(count)])


def test_small_object_size_is_measured_at_the_training_input(tmp_path: Path) -> None:
    data = hand_dataset(tmp_path, [(rect_image(256, 128, (0, 0, 40, 60)), [[0, 0, 40, 60]], [0])])
    assert small_object_px(data.samples, 128) == pytest.approx(20.0)  # letterboxed at half size
    assert small_object_px(DetectionDataset([], ["a"]).samples, 128) is None


def test_zoom_out_never_shrinks_small_objects_below_the_floor(tmp_path: Path) -> None:
    data = square_objects(tmp_path, 20)
    still = {**STILL, "translate": 0.0}
    floored = YoloTrainDataset(data, 128, TrainAugment(**NO_COLOUR, **{**still, "scale": 0.9, "min_object_px": 14}), seed=2)
    free = YoloTrainDataset(data, 128, TrainAugment(**NO_COLOUR, **{**still, "scale": 0.9, "min_object_px": 0}), seed=2)
    assert floored.small_object_px == pytest.approx(20.0)
    low = {"floored": [], "free": []}
    for epoch in range(30):
        for name, ds in (("floored", floored), ("free", free)):
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                _, targets, _ = ds[i]
                low[name].append(float(targets[:, 3:5].min()) * 128 if len(targets) else np.inf)
    assert min(low["floored"]) >= 14.0 - 1e-6
    assert min(low["free"]) < 10.0  # the floor is what holds them up
    assert max(low["floored"]) > 20.0 * 1.5  # zooming in is left alone


def test_a_floor_above_the_objects_turns_zoom_out_off(tmp_path: Path) -> None:
    ds = YoloTrainDataset(square_objects(tmp_path, 20), 128, TrainAugment(**NO_COLOUR, **{**STILL, "scale": 0.5, "min_object_px": 32}))
    zooms = [ds.draws(i, epoch).zoom for epoch in range(20) for i in range(len(ds))]
    assert min(zooms) >= 1.0 and max(zooms) > 1.2


def test_mosaic_crops_the_canvas_so_objects_keep_their_pixel_size(tmp_path: Path) -> None:
    side = 24
    ds = YoloTrainDataset(square_objects(tmp_path, side, count=8), 128, TrainAugment(**NO_COLOUR, **{**STILL, "mosaic": 1.0}), seed=3)
    full = 0
    for epoch in range(10):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            _, targets, _ = ds[i]
            for x1, y1, x2, y2 in xyxy_pixels(targets, 128):
                w, h = x2 - x1, y2 - y1
                assert w <= side + 1e-4 and h <= side + 1e-4  # never enlarged
                # boxes under full size were cut by the crop or their tile's edge; a 2S canvas resized
                # to S would leave none at full size (all at half)
                full += abs(w - side) < 1e-4 and abs(h - side) < 1e-4
    assert full >= 20


# ------------------------------------------------------------------------------- failures


def test_unreadable_image_gives_grey_and_no_targets(tmp_path: Path, caplog) -> None:
    good = rect_image(64, 64, (8, 8, 40, 40))
    data = hand_dataset(
        tmp_path, [(good, [[8, 8, 40, 40]], [0]), (b"not an image", [[1, 1, 9, 9]], [1]), (None, [[0, 0, 5, 5]], [2])]
    )
    ds = YoloTrainDataset(data, 64, TrainAugment())
    with caplog.at_level(logging.WARNING, logger="edgeyolo.train.data"):
        for epoch in range(2):
            ds.set_epoch(epoch)
            for index in (1, 2):
                image, targets, _ = ds[index]
                assert torch.all(image == PAD_VALUE) and targets.shape == (0, 5)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and ds.bad_images == 2 and ds.bad_indices == [1, 2]
    mosaic = YoloTrainDataset(data, 64, TrainAugment(mosaic=1.0))
    for index in range(3):
        image, targets, _ = mosaic[index]  # bad partners are grey tiles
        assert image.shape == (3, 64, 64) and set(targets[:, 0].tolist()) <= {0.0}
    fresh = YoloTrainDataset(data, 64, None)
    batches = list(make_loader(fresh, 2, shuffle=False, workers=2))
    assert sum(len(b[1]) for b in batches) == 1
    assert fresh.bad_images == 2  # counted in the workers, visible here
    copy = pickle.loads(pickle.dumps(fresh))
    assert copy.bad_images == 2 and torch.equal(copy[0][0], fresh[0][0])


# --------------------------------------------------------------------------- batches etc.


def test_collate_shapes_and_batch_index() -> None:
    batch = [
        (torch.zeros(3, 32, 32), torch.tensor([[1, 0.5, 0.5, 0.2, 0.2]]), 7),
        (torch.ones(3, 32, 32), torch.zeros((0, 5)), 2),
        (torch.ones(3, 32, 32), torch.tensor([[0, 0.1, 0.1, 0.1, 0.1], [2, 0.9, 0.9, 0.1, 0.1]]), 4),
    ]
    images, targets, indices = collate(batch)
    assert images.shape == (3, 3, 32, 32) and targets.shape == (3, 6) and targets.dtype == torch.float32
    assert targets[:, 0].tolist() == [0.0, 2.0, 2.0] and targets[:, 1].tolist() == [1.0, 0.0, 2.0]
    assert indices.tolist() == [7, 2, 4] and indices.dtype == torch.int64
    _, empty, _ = collate(batch[1:2])
    assert empty.shape == (0, 6)


def test_cache_and_img_size(synth: DetectionDataset) -> None:
    aug = TrainAugment(degrees=5, mosaic=0.5)
    cached = YoloTrainDataset(synth, 128, aug, cache=True)
    uncached = YoloTrainDataset(synth, 128, aug)
    for i in range(len(synth.samples)):
        assert torch.equal(cached[i][0], uncached[i][0]) and torch.equal(cached[i][1], uncached[i][1])
    cached.set_img_size(96)
    image, targets, _ = cached[0]
    assert image.shape == (3, 96, 96) and bool(((targets[:, 1:] >= 0) & (targets[:, 1:] <= 1)).all())
    explicit, _, _ = uncached[(0, 96)]
    assert torch.equal(explicit, image)
    gray = YoloTrainDataset(synth, 128, TrainAugment(degrees=10, shear=5, mosaic=0.5), channels=1)
    for i in range(4):
        image, targets, _ = gray[i]
        assert image.shape == (1, 128, 128) and float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_image_cache_is_shared_by_file_and_removed_with_its_owner(tmp_path: Path) -> None:
    images = [np.random.default_rng(i).integers(0, 256, (5 + i, 7, 3), dtype=np.uint8) for i in range(3)]
    images[1] = None  # an unreadable image stays unreadable
    cache = ImageCache(3, lambda i: images[i])
    assert cache.nbytes == images[0].nbytes + images[2].nbytes and cache.path.exists()
    copy = pickle.loads(pickle.dumps(cache))  # what a loader worker receives
    assert len(pickle.dumps(cache)) < 1000  # names and offsets, not pixels
    for entry in (cache, copy):
        assert np.array_equal(entry[0], images[0]) and entry[1] is None and np.array_equal(entry[2], images[2])
    with pytest.raises(ValueError):
        copy[0][0, 0, 0] = 1  # read-only: augmentation can never corrupt the cache
    path = cache.path
    del copy
    assert path.exists()  # a worker's copy does not remove the owner's file
    del cache
    assert not path.exists()


def test_epoch_in_the_key_equals_the_dataset_epoch(synth: DetectionDataset) -> None:
    ds = YoloTrainDataset(synth, 128, TrainAugment(mosaic=0.5, degrees=5))
    ds.set_epoch(3)
    current = ds[(2, 128)]
    ds.set_epoch(0)
    keyed = ds[(2, 128, 3)]
    assert torch.equal(current[0], keyed[0]) and torch.equal(current[1], keyed[1])
    assert not torch.equal(ds[(2, 128, 4)][0], keyed[0])


def test_epochs_from_plain_from_on_are_the_contract_letterbox(synth: DetectionDataset) -> None:
    closing = YoloTrainDataset(synth, 128, TrainAugment(degrees=5), plain_from=2)
    always = YoloTrainDataset(synth, 128, TrainAugment(degrees=5))
    plain = YoloTrainDataset(synth, 128, None)
    for index in range(3):
        assert torch.equal(closing[(index, 128, 1)][0], always[(index, 128, 1)][0])  # before: augmented as ever
        assert not torch.equal(closing[(index, 128, 1)][0], plain[(index, 128, 1)][0])
        for epoch in (2, 5):
            got, want = closing[(index, 128, epoch)], plain[(index, 128, epoch)]
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    closing.set_epoch(2)
    assert torch.equal(closing[0][0], plain[(0, 128, 2)][0])


def test_hsv_from_bgr_equals_hsv_after_the_colour_swap() -> None:
    """The training tile folds BGR→RGB into the HSV round trip; the pixels must not change."""
    from edgeyolo.train.data import _hsv

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    for gains in (np.array([7.0, 1.3, 0.8]), np.array([-20.0, 0.5, 1.6]), np.array([0.0, 1.0, 1.0])):
        expected = _hsv(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), gains)
        np.testing.assert_array_equal(_hsv(image, gains, bgr=True), expected)
