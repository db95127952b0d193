"""``detect``: run a runner over whatever a user points it at and write what it saw.

Sources: an image, a folder, a glob, a video file, a webcam index, an RTSP/HTTP URL or a GStreamer
pipeline string (the usual Jetson CSI camera input). Images are read with OpenCV; an unreadable file
among readable ones is skipped and reported in the result, but a source of which nothing at all could
be read is an error naming the file and why (never "0 frames" and an empty output folder).
"""
from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from edgeyolo.contract import Contract
from edgeyolo.errors import InputFileError, UsageError
from edgeyolo.fileio import atomic_write_bytes, atomic_write_text
from edgeyolo.model.io import IMAGE_SUFFIXES
from edgeyolo.runtime.base import Runner
from edgeyolo.runtime.sliced import Slicing, detect_sliced

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm")


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # BGR uint8
    name: str  # file stem, or "<stem>_<frame>" for video
    stream: str | None  # the video/stream this frame belongs to, None for still images
    index: int
    fps: float = 0.0  # of the stream; 0 for still images


@dataclass
class SourcePlan:
    """What a source string resolves to: still images and/or one stream."""

    images: list[Path] = field(default_factory=list)
    stream: str | int | None = None
    stream_name: str = ""
    backend: int | None = None  # cv2.CAP_* when it must be forced (GStreamer)


def plan_source(source: str) -> SourcePlan:
    path = Path(source)
    if source.isdigit():
        return SourcePlan(stream=int(source), stream_name=f"webcam{source}")
    if "!" in source:  # gst-launch syntax: v4l2src ! ... ! appsink
        import cv2

        return SourcePlan(stream=source, stream_name="gstreamer", backend=cv2.CAP_GSTREAMER)
    if source.split("://", 1)[0].lower() in ("rtsp", "rtmp", "http", "https"):
        return SourcePlan(stream=source, stream_name=Path(source.split("?", 1)[0]).stem or "stream")
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES)
        if not images:
            raise InputFileError(f"--source {source}: no images or videos in this folder")
        return SourcePlan(images=images)
    if any(ch in source for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(source, recursive=True))
        images = [p for p in matches if p.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]
        if not images:
            raise InputFileError(f"--source {source}: the pattern matches no images or videos")
        return SourcePlan(images=images)
    if not path.exists():
        raise InputFileError(f"--source {source}: no such file, folder, camera index or stream URL")
    return SourcePlan(images=[path])


def iter_frames(plan: SourcePlan, on_skip: Callable[[str, str], None]) -> Iterator[Frame]:
    import cv2

    for index, path in enumerate(plan.images):
        if path.suffix.lower() in VIDEO_SUFFIXES:
            yield from _iter_stream(str(path), path.stem, None, on_skip)
            continue
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            on_skip(str(path), _unreadable(path, "image"))
            continue
        yield Frame(image, path.stem, None, index)
    if plan.stream is not None:
        yield from _iter_stream(plan.stream, plan.stream_name, plan.backend, on_skip)


def _unreadable(path: Path, kind: str) -> str:
    """Why OpenCV could not read ``path`` as an image or video, as far as the bytes tell."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError as exc:
        return f"cannot read the file ({exc.strerror or exc})"
    if size == 0:
        return "empty file (0 bytes)"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return f"not a readable {kind}: the file is text ({size} bytes)"
    return f"not a readable {kind}: OpenCV cannot decode its {size} bytes"


def _iter_stream(source: str | int, name: str, backend: int | None, on_skip: Callable[[str, str], None]) -> Iterator[Frame]:
    import cv2

    cap = cv2.VideoCapture(source, backend) if backend is not None else cv2.VideoCapture(source)
    if not cap.isOpened():
        is_file = isinstance(source, str) and Path(source).is_file()
        on_skip(str(source), _unreadable(Path(source), "video") if is_file else "cannot open the video/stream")
        return
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and 0 < fps < 1000 else 25.0
    try:
        index = 0
        while True:
            ok, image = cap.read()
            if not ok:
                break
            yield Frame(image, f"{name}_{index:06d}", name, index, fps)
            index += 1
        if index == 0:
            on_skip(str(source), "no frames could be decoded")
    finally:
        cap.release()


def _nothing_read(source: str, skipped: Sequence[tuple[str, str]]) -> str:
    if len(skipped) == 1:
        what, why = skipped[0]
        return f"{what}: {why}; nothing to detect on"
    shown = "; ".join(f"{what}: {why}" for what, why in skipped[:3])
    more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
    return f"--source {source}: none of its {len(skipped)} files could be read: {shown}{more}"


def _colour(cls: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(cls * 7919 + 17)
    return tuple(int(v) for v in rng.integers(64, 256, 3))


def draw(image: np.ndarray, det: np.ndarray, names: Sequence[str]) -> np.ndarray:
    import cv2

    out = image.copy()
    thickness = max(1, round(sum(out.shape[:2]) / 600))
    for x1, y1, x2, y2, score, cls in det:
        c = int(cls)
        label = f"{names[c] if c < len(names) else c} {score:.2f}"
        colour = _colour(c)
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(out, p1, p2, colour, thickness, cv2.LINE_AA)
        (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, 1)
        top = max(p1[1], th + 4)
        cv2.rectangle(out, (p1[0], top - th - 4), (p1[0] + tw + 2, top), colour, -1)
        cv2.putText(out, label, (p1[0] + 1, top - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, (0, 0, 0), 1, cv2.LINE_AA)
    return out


@dataclass
class DetectResult:
    frames: int = 0
    detections: int = 0
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)  # COCO-style, when save_json
    seconds_inference: float = 0.0


def run_detect(
    runner: Runner,
    contract: Contract,
    source: str,
    output: Path,
    names: Sequence[str],
    save_images: bool = True,
    save_txt: bool = False,
    save_json: bool = False,
    category_ids: Sequence[int] | None = None,
    image_ids: dict[str, int | str] | None = None,
    progress: Callable[[Iterator[Frame]], Iterator[Frame]] | None = None,
    slicing: Slicing | None = None,
) -> DetectResult:
    """Detect on every frame of ``source``; annotated images/videos, txt and json go to ``output``.

    With ``slicing``, each frame runs as overlapping tiles merged in frame coordinates
    (:mod:`edgeyolo.runtime.sliced`)."""
    import cv2

    plan = plan_source(source)
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} is a file; detect writes into a folder")
    result = DetectResult()

    def skip(what: str, why: str) -> None:
        log.debug("skipped %s: %s", what, why)  # the caller reports result.skipped
        result.skipped.append((what, why))

    writers: dict[str, object] = {}
    frames = iter_frames(plan, skip)
    if progress is not None:
        frames = progress(frames)
    try:
        for frame in frames:
            if slicing is not None:
                sliced = detect_sliced(runner, contract, frame.image, slicing)
                det = sliced.det
                result.seconds_inference += sliced.seconds_inference
            else:
                blob, box = contract.preprocess(frame.image)
                det = contract.postprocess(runner.infer(blob)[0], box)
                result.seconds_inference += runner.last_inference_s
            result.frames += 1
            result.detections += len(det)
            if save_images:
                annotated = draw(frame.image, det, names)
                if frame.stream is None:
                    target = output / f"{frame.name}.jpg"
                    ok, data = cv2.imencode(".jpg", annotated)
                    if ok:
                        atomic_write_bytes(target, data.tobytes())
                        result.written.append(target)
                else:
                    writer = writers.get(frame.stream)
                    if writer is None:
                        output.mkdir(parents=True, exist_ok=True)  # only once there is something to write
                        target = output / f"{frame.stream}.mp4"
                        h, w = annotated.shape[:2]
                        writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), frame.fps, (w, h))
                        writers[frame.stream] = writer
                        result.written.append(target)
                    writer.write(annotated)  # type: ignore[attr-defined]
            h, w = frame.image.shape[:2]
            if save_txt:
                lines = []
                for x1, y1, x2, y2, score, cls in det:
                    lines.append(f"{int(cls)} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f} {score:.5f}")
                atomic_write_text(output / "labels" / f"{frame.name}.txt", "".join(line + "\n" for line in lines))
            if save_json:
                image_id = image_ids.get(frame.name, frame.name) if image_ids else frame.name
                for x1, y1, x2, y2, score, cls in det:
                    c = int(cls)
                    result.records.append(
                        {
                            "image_id": image_id,
                            "category_id": int(category_ids[c]) if category_ids else c,
                            "bbox": [round(float(x1), 3), round(float(y1), 3), round(float(x2 - x1), 3), round(float(y2 - y1), 3)],
                            "score": round(float(score), 5),
                        }
                    )
    finally:
        for writer in writers.values():
            writer.release()  # type: ignore[attr-defined]
    if result.frames == 0:  # nothing was written either: the output folder was never created
        raise InputFileError(_nothing_read(source, result.skipped))
    if save_json:
        target = atomic_write_text(output / "detections.json", json.dumps(result.records))
        result.written.append(target)
    return result
