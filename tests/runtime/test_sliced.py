"""Sliced inference: tiles mapped back to the image, merged across seams, scored over whole images."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from edgeyolo.cli.app import main
from edgeyolo.contract import Contract, box_iou
from edgeyolo.data.types import Annotation, DetectionDataset, Sample
from edgeyolo.errors import UsageError
from edgeyolo.runtime import sliced
from edgeyolo.runtime.base import Runner
from edgeyolo.runtime.evaluate import evaluate_runner
from edgeyolo.runtime.sliced import Slicing, detect_sliced
from tests.conftest import cfg_path, shared_path

GREY, RED = (127, 127, 127), (0, 0, 255)  # BGR


class RedSquares(Runner):
    """A detector whose answer is known: every 4-connected patch of pure red in the input is one
    object of class 0, its box the patch's bounding box in input pixels."""

    name = "red-squares"

    def infer_impl(self, blob: np.ndarray) -> np.ndarray:
        r, g, b = blob[0]
        mask = ((r > 0.6) & (g < 0.3) & (b < 0.3)).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        rows = [[x + w / 2, y + h / 2, w, h, 1.0, 1.0] for x, y, w, h, _ in stats[1:n]]
        return np.asarray(rows or [[0, 0, 1, 1, 0, 0]], np.float32)[None]


def canvas(width: int, height: int, squares) -> np.ndarray:
    image = np.full((height, width, 3), GREY, np.uint8)
    for x1, y1, x2, y2 in squares:
        image[y1:y2, x1:x2] = RED
    return image


def raw_tiles(runner, contract, image, slicing):
    """Per-tile detections in image pixels, before any merging."""
    out = []
    for w in slicing.windows(image.shape[1], image.shape[0]):
        blob, box = contract.preprocess(image[w.y0 : w.y1, w.x0 : w.x1])
        det = contract.postprocess(runner.infer(blob)[0], box)
        det[:, [0, 2]] += w.x0
        det[:, [1, 3]] += w.y0
        out.append(det)
    return np.concatenate(out)


# ------------------------------------------------------------------------------ a detector known in advance


def test_an_object_on_a_seam_is_detected_once():
    contract = Contract(128, 128, conf_threshold=0.5)
    slicing = Slicing.of(128, 32)
    assert [w.x0 for w in slicing.windows(400, 200)][:2] == [0, 91]  # the first seam: tile 0 ends at x = 128
    seam, border = (122, 20, 142, 40), (380, 150, 400, 170)  # 6 px of the first in tile 0; the second on the image edge
    image = canvas(400, 200, [seam, border])
    runner = RedSquares(contract)
    raw = raw_tiles(runner, contract, image, slicing)
    piece = raw[np.isclose(raw[:, 2], 128)]
    assert len(piece) == 1 and box_iou(piece[:, :4], np.array([seam], np.float32))[0, 0] < contract.iou_threshold  # NMS alone keeps it
    det = detect_sliced(runner, contract, image, slicing).det
    assert len(det) == 2
    assert np.allclose(sorted(det[:, :4].tolist()), [seam, border])


def test_tiles_map_back_to_the_image_through_the_letterbox():
    """Tiles of 256 px into a 128 px input (scale 0.5): every square found once, where it is."""
    rng = np.random.default_rng(0)
    truth = []
    for y in range(10, 440, 64):  # every square inside the 700 × 500 image
        for x in range(10, 640, 64):
            dx, dy = (int(v) for v in rng.integers(0, 30, 2))
            truth.append((x + dx, y + dy, x + dx + 24, y + dy + 24))
    image = canvas(700, 500, truth)
    contract = Contract(128, 128, conf_threshold=0.5)
    slicing = Slicing.of(256, "0.25")
    result = detect_sliced(RedSquares(contract), contract, image, slicing)
    assert result.tiles == len(slicing.windows(700, 500)) == 12  # 4 × 3
    iou = box_iou(np.array(truth, np.float32), result.det[:, :4])
    # a 24 px square is 12 px in the input: a pixel of blur each side costs up to ~0.3 of IoU
    assert len(result.det) == len(truth) and (iou.max(axis=1) >= 0.7).all() and np.median(iou.max(axis=1)) >= 0.85


def test_an_image_within_one_tile_runs_as_without_slicing():
    image = canvas(120, 90, [(10, 10, 30, 40)])
    contract = Contract(128, 128, conf_threshold=0.5)
    runner = RedSquares(contract)
    blob, box = contract.preprocess(image)
    plain = contract.postprocess(runner.infer(blob)[0], box)
    result = detect_sliced(runner, contract, image, Slicing.of(128, 0.2))
    assert result.tiles == 1 and np.array_equal(result.det, plain)


def test_sliced_evaluation_scores_the_whole_image_beyond_the_per_image_cap(tmp_path):
    """150 objects in one image: more than the 100 detections a single run keeps."""
    truth = [(x, y, x + 16, y + 16) for y in range(8, 580, 40) for x in range(8, 400, 40)][:150]
    path = tmp_path / "big.png"
    cv2.imwrite(str(path), canvas(420, 600, truth))
    sample = Sample(path, "big", 420, 600, Annotation.of(truth, [0] * len(truth)))
    dataset = DetectionDataset([sample], ["square"])
    contract = Contract(128, 128, conf_threshold=0.001)
    ev = evaluate_runner(RedSquares(contract), contract, dataset, "voc12", slicing=Slicing.of(128, 32))
    assert len(ev.detections[0]) == 150 and ev.result.map50 > 0.999 and ev.result.recall > 0.999
    with pytest.raises(UsageError):
        Slicing.of(128, "128px")


# ------------------------------------------------------------------------------ a real model, every backend


@pytest.fixture(scope="module")
def tiny(tiny_weights):
    import torch

    from edgeyolo.model.checkpoint import load_model

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_model(cfg_path("yolov3-tiny"), tiny_weights)
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def pasted():
    """dog.jpg at 352 px pasted 3 × 2 times on a grey canvas (1184 × 624), and what yolov3-tiny sees
    in one copy at the same scale (one 416 input holding it unscaled)."""
    photo = cv2.imread(str(shared_path("images", "dog.jpg")))
    h, w = photo.shape[:2]
    small = cv2.resize(photo, (round(w * 352 / max(h, w)), round(h * 352 / max(h, w))), interpolation=cv2.INTER_AREA)
    sh, sw = small.shape[:2]
    gap = 32
    big = np.full((2 * sh + 3 * gap, 3 * sw + 4 * gap, 3), 127, np.uint8)
    origins = [(gap + i * (sw + gap), gap + j * (sh + gap)) for j in range(2) for i in range(3)]
    for x, y in origins:
        big[y : y + sh, x : x + sw] = small
    single = np.full((416, 416, 3), 127, np.uint8)
    single[gap : gap + sh, gap : gap + sw] = small
    return big, single, origins, (sw, sh), gap


CONTRACT = Contract(416, 416, conf_threshold=0.3)


def reference(model, single, gap):
    from edgeyolo.runtime.runners import make_runner

    with make_runner("torch", model, CONTRACT) as runner:
        blob, box = CONTRACT.preprocess(single)
        det = CONTRACT.postprocess(runner.infer(blob)[0], box)
    det = det[det[:, 4] >= 0.4]
    det[:, :4] -= gap
    return det


def per_copy(det, origins, size):
    """Classes of the confident detections whose centre lies in each copy."""
    sw, sh = size
    cx, cy = (det[:, 0] + det[:, 2]) / 2, (det[:, 1] + det[:, 3]) / 2
    return [sorted(det[(cx >= x) & (cx < x + sw) & (cy >= y) & (cy < y + sh) & (det[:, 4] >= 0.4), 5].astype(int).tolist())
            for x, y in origins]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime", "opencv"])
def test_every_copy_of_a_pasted_image_is_found_once(tiny, pasted, backend):
    from edgeyolo.runtime.runners import make_runner

    big, single, origins, size, gap = pasted
    ref = reference(tiny, single, gap)
    assert sorted(ref[:, 5].astype(int).tolist()) == [1, 2, 2, 16]  # bicycle, two cars, dog
    with make_runner(backend, tiny, CONTRACT) as runner:
        result = detect_sliced(runner, CONTRACT, big, Slicing.of(416, 0.2))
    assert result.tiles == 8
    assert per_copy(result.det, origins, size) == [[1, 2, 2, 16]] * 6  # nothing missed, nothing twice
    for x, y in origins:
        shifted = ref[:, :4] + np.array([x, y, x, y], np.float32)
        for box, cls in zip(shifted, ref[:, 5]):
            same = result.det[result.det[:, 5] == cls]
            assert box_iou(box[None], same[:, :4]).max() >= 0.7, (backend, (x, y), int(cls))


def test_without_the_seam_rule_copies_get_extra_boxes(tiny, pasted, monkeypatch):
    """The check above can fail: NMS alone leaves cut pieces of objects (a second car, a cat)."""
    from edgeyolo.runtime.runners import make_runner

    big, _, origins, size, _ = pasted
    monkeypatch.setattr(sliced, "CONTAINED", 2.0)  # no cut box is ever covered enough to go
    with make_runner("torch", tiny, CONTRACT) as runner:
        det = detect_sliced(runner, CONTRACT, big, Slicing.of(416, 0.2)).det
    assert per_copy(det, origins, size) != [[1, 2, 2, 16]] * 6


def test_detect_and_test_commands_with_tiles(tiny, pasted, tmp_path, capsys):
    big, single, origins, _, gap = pasted
    ref = reference(tiny, single, gap)
    root = tmp_path / "ds"
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    cv2.imwrite(str(root / "images" / "val" / "big.png"), big)
    h, w = big.shape[:2]
    lines = []
    for x, y in origins:
        for x1, y1, x2, y2, _, c in ref:
            x1, y1, x2, y2 = x1 + x, y1 + y, x2 + x, y2 + y
            lines.append(f"{int(c)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    (root / "labels" / "val" / "big.txt").write_text("\n".join(lines) + "\n")
    names = [n for n in (cfg_path("yolov3-tiny").parent / "coco.names").read_text().splitlines() if n]
    (root / "data.yaml").write_text(f"path: {root}\nval: images/val\nnames: {json.dumps(names)}\n")
    model = ["--cfg", str(cfg_path("yolov3-tiny")), "--weights", str(shared_path("models", "yolov3-tiny.weights")), "--backend", "torch"]
    scores = {}
    for extra in ([], ["--tile", "416"]):
        code = main(["test", "--data", str(root / "data.yaml"), *model, "--metric", "voc12", "--conf", "0.3", "--json", *extra])
        out = capsys.readouterr().out
        assert code == 0, out
        scores[bool(extra)] = json.loads(out)["map50"]
    assert scores[True] > 0.9 and scores[True] > scores[False] + 0.2  # the whole scene letterboxed loses objects
    code = main(["detect", "--source", str(root / "images" / "val" / "big.png"), *model, "--output", str(tmp_path / "det"),
                 "--conf", "0.4", "--tile", "416", "--tile-overlap", "0.2", "--save-txt", "--no-save"])
    assert code == 0
    assert len((tmp_path / "det" / "labels" / "big.txt").read_text().splitlines()) == 24  # 6 copies × 4 objects
