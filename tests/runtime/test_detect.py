"""detect: every backend gives the same boxes; every kind of source; json/txt/video outputs."""
import json
import os
import stat
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgeyolo.contract import Contract, box_iou
from edgeyolo.errors import InputFileError
from edgeyolo.model.checkpoint import load_model
from edgeyolo.runtime.detect import plan_source, run_detect
from edgeyolo.runtime.runners import make_runner
from tests.conftest import cfg_path

CUT = 0.3
BAND = 0.03  # a box near the cut may fall on either side in another backend


@pytest.fixture(scope="module")
def tiny_model(tiny_weights):
    return load_model(cfg_path("yolov3-tiny"), tiny_weights)


def detections_by_backend(model, weights, photos):
    contract = Contract(416, 416, conf_threshold=CUT - BAND)
    out = {}
    for backend in ("torch", "onnxruntime", "opencv"):
        with make_runner(backend, model, contract, cfg_path=cfg_path("yolov3-tiny"), weights_path=weights) as runner:
            per_image = []
            for photo in photos:
                blob, box = contract.preprocess(cv2.imread(str(photo)))
                per_image.append(contract.postprocess(runner.infer(blob)[0], box))
            out[backend] = per_image
    return out


def assert_same_boxes(a: np.ndarray, b: np.ndarray, what: str) -> int:
    """Every box of ``a`` above CUT + BAND has a twin in ``b``: same class, IoU >= 0.9, score within 0.03."""
    checked = 0
    for row in a[a[:, 4] >= CUT + BAND]:
        same = b[b[:, 5] == row[5]]
        assert len(same), f"{what}: no class {int(row[5])} box at all"
        ious = box_iou(row[None, :4], same[:, :4])[0]
        j = int(np.argmax(ious))
        assert ious[j] >= 0.9, f"{what}: best IoU {ious[j]:.3f} for {row}"
        assert abs(same[j, 4] - row[4]) <= 0.03, f"{what}: score {same[j, 4]:.3f} vs {row[4]:.3f}"
        checked += 1
    return checked


def test_backends_agree_on_real_photos(tiny_model, tiny_weights, photos):
    dets = detections_by_backend(tiny_model, tiny_weights, photos)
    checked = 0
    for i, photo in enumerate(photos):
        for a in dets:
            for b in dets:
                if a != b:
                    checked += assert_same_boxes(dets[a][i], dets[b][i], f"{photo.name} {a} vs {b}")
    assert checked >= 6 * 10  # a real comparison: dozens of confident boxes across the photos


def test_agreement_check_fails_for_a_wrong_contract(tiny_model, photos):
    """The comparison can fail: BGR instead of RGB input moves boxes/scores."""
    right = Contract(416, 416, conf_threshold=CUT - BAND)
    wrong = Contract(416, 416, conf_threshold=CUT - BAND, channel_order="bgr")
    runner = make_runner("torch", tiny_model, right)
    with pytest.raises(AssertionError):
        for photo in photos:
            image = cv2.imread(str(photo))
            blob, box = right.preprocess(image)
            good = right.postprocess(runner.infer(blob)[0], box)
            blob, box = wrong.preprocess(image)
            bad = right.postprocess(runner.infer(blob)[0], box)
            assert_same_boxes(good, bad, photo.name)


def test_dog_photo_finds_dog_bicycle_and_car(tiny_model, photos):
    contract = Contract(416, 416)
    dog = next(p for p in photos if p.stem == "dog")
    blob, box = contract.preprocess(cv2.imread(str(dog)))
    det = contract.postprocess(make_runner("onnxruntime", tiny_model, contract).infer(blob)[0], box)
    assert {1, 2, 16} <= set(det[:, 5].astype(int).tolist())  # bicycle, car, dog (COCO ids)


def test_sources_are_planned(tmp_path, photos):
    assert plan_source("0").stream == 0
    assert plan_source("rtsp://cam.local/stream1").stream == "rtsp://cam.local/stream1"
    gst = "nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720 ! nvvidconv ! appsink"
    plan = plan_source(gst)
    assert plan.stream == gst and plan.backend == cv2.CAP_GSTREAMER
    assert plan_source(str(photos[0].parent)).images == photos
    assert plan_source(str(photos[0].parent / "d*.jpg")).images == [p for p in photos if p.name.startswith("d")]
    assert plan_source(str(photos[0])).images == [photos[0]]
    with pytest.raises(InputFileError):
        plan_source(str(tmp_path / "missing.jpg"))
    with pytest.raises(InputFileError):
        plan_source(str(tmp_path))  # empty folder


def test_folder_json_txt_and_unreadable_file(tiny_model, photos, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in photos[:3]:
        shutil.copy(p, src / p.name)
    (src / "broken.jpg").write_bytes(b"not an image")
    contract = Contract(416, 416)
    result = run_detect(
        make_runner("onnxruntime", tiny_model, contract), contract, str(src), tmp_path / "out",
        [str(i) for i in range(80)], save_txt=True, save_json=True,
    )
    assert result.frames == 3 and result.skipped == [(str(src / "broken.jpg"), "not a readable image: the file is text (12 bytes)")]
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert len(records) == result.detections > 0
    assert {r["image_id"] for r in records} <= {p.stem for p in photos[:3]}
    for r in records:
        x, y, w, h = r["bbox"]
        assert w > 0 and h > 0 and 0 <= r["category_id"] < 80 and 0.25 <= r["score"] <= 1
    for p in photos[:3]:
        assert (tmp_path / "out" / f"{p.stem}.jpg").exists()
        rows = [line.split() for line in (tmp_path / "out" / "labels" / f"{p.stem}.txt").read_text().splitlines()]
        assert all(len(r) == 6 and all(0 <= float(v) <= 1 for v in r[1:5]) for r in rows)


def test_video_in_annotated_video_out(tiny_model, photos, tmp_path):
    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 10, (320, 240))
    base = cv2.resize(cv2.imread(str(photos[0])), (320, 240))
    for k in range(6):
        writer.write(np.roll(base, 4 * k, axis=1))
    writer.release()
    contract = Contract(416, 416)
    result = run_detect(make_runner("torch", tiny_model, contract), contract, str(clip), tmp_path / "out", [str(i) for i in range(80)])
    assert result.frames == 6 and result.detections > 0
    cap = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (240, 320, 3) and frames == 6


def test_cli_detect(tiny_weights, photos, tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-c", "import sys; from edgeyolo.cli.app import main; sys.exit(main())",
        "detect", "--cfg", str(cfg_path("yolov3-tiny")), "--weights", str(tiny_weights),
        "--source", str(photos[0]), "--output", str(out), "--backend", "opencv", "--save-json",
        "--names", str(cfg_path("yolov3-tiny").parent / "coco.names"), "--classes", "16", "--classes", "1",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = json.loads((out / "detections.json").read_text())
    assert records and {r["category_id"] for r in records} <= {1, 16}


def test_cli_detect_folder_with_some_bad_files_warns_per_file(tmp_path, capsys):
    """Unreadable files among readable ones: one warning each, exit 0, the readable ones written with
    the umask's mode (atomic writes start from a 0o600 temp file)."""
    from edgeyolo.cli.app import main
    from tests.badinput.test_corpus import darknet_weights, image_bytes, small_cfg

    cfg = tmp_path / "small.cfg"
    cfg.write_text(small_cfg({}))
    weights = tmp_path / "small.weights"
    weights.write_bytes(darknet_weights(cfg))
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.jpg").write_bytes(image_bytes(".jpg", 64, 48))
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.png").write_text("not a png\n")
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        code = main(["detect", "--cfg", str(cfg), "--weights", str(weights), "--source", str(src), "--output", str(out)])
    finally:
        os.umask(old)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.splitlines() == [
        f"warning: skipped {src / 'empty.jpg'}: empty file (0 bytes)",
        f"warning: skipped {src / 'notes.png'}: not a readable image: the file is text (10 bytes)",
    ]
    assert "1 frames" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["good.jpg"]
    assert stat.S_IMODE((out / "good.jpg").stat().st_mode) == 0o644
