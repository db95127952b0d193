"""Bad input fails loudly and cleanly: one-line error, non-zero exit, no traceback, nothing half-written.

Three levels: the cfg parser points at the exact ``file:line`` of each kind of mistake; the darknet
weights loader names expected vs actual bytes and leaves the model untouched when it refuses a file;
the CLI turns every such error into one ``error:`` line on stderr (a traceback only with ``--debug``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgeyolo.errors import CfgError, WeightsError
from edgeyolo.model.cfg import YoloSpec, parse_cfg
from edgeyolo.model.darknet import Darknet
from edgeyolo.model.weights import DarknetHeader, layer_floats, load_darknet_weights, save_darknet_weights

# A tiny valid cfg. The line numbers in the comments are what the mutations below refer to; every
# mutation replaces one whole line (a replacement may hold "\n" to insert lines, shifting the rest).
BASE_CFG_LINES = [
    "[net]",  # 1
    "width=64",  # 2
    "height=64",  # 3
    "channels=3",  # 4
    "",  # 5
    "[convolutional]",  # 6   layer 0: 16x64x64
    "batch_normalize=1",  # 7
    "filters=16",  # 8
    "size=3",  # 9
    "stride=1",  # 10
    "pad=1",  # 11
    "activation=leaky",  # 12
    "",  # 13
    "[maxpool]",  # 14  layer 1: 16x32x32
    "size=2",  # 15
    "stride=2",  # 16
    "",  # 17
    "[convolutional]",  # 18  layer 2: 32x32x32
    "batch_normalize=1",  # 19
    "filters=32",  # 20
    "size=3",  # 21
    "stride=1",  # 22
    "pad=1",  # 23
    "activation=leaky",  # 24
    "",  # 25
    "[route]",  # 26  layer 3: = layer 2
    "layers=-1",  # 27
    "",  # 28
    "[shortcut]",  # 29  layer 4: layer 3 + layer 2
    "from=-2",  # 30
    "activation=linear",  # 31
    "",  # 32
    "[convolutional]",  # 33  layer 5: head, 3 * (2 + 5) = 21 filters
    "filters=21",  # 34
    "size=1",  # 35
    "stride=1",  # 36
    "pad=1",  # 37
    "activation=linear",  # 38
    "",  # 39
    "[yolo]",  # 40  layer 6
    "mask=0,1,2",  # 41
    "anchors=10,14, 23,27, 37,58",  # 42
    "classes=2",  # 43
    "num=3",  # 44
]
BASE_CFG = "\n".join(BASE_CFG_LINES) + "\n"


def mutate(changes: dict[int, str]) -> str:
    lines = list(BASE_CFG_LINES)
    for number, text in changes.items():
        lines[number - 1] = text
    return "\n".join(lines) + "\n"


def write_cfg_text(tmp_path: Path, text: str, name: str = "model.cfg") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ cfg


def test_base_cfg_is_valid(tmp_path: Path) -> None:
    cfg = parse_cfg(write_cfg_text(tmp_path, BASE_CFG))
    assert len(cfg.layers) == 7
    assert isinstance(cfg.layers[-1], YoloSpec) and cfg.num_classes == 2


MALFORMED = [
    # (mutation, line the error must point at, substring of the message)
    pytest.param({14: "[maxpoool]"}, 14, "unknown section [maxpoool]", id="unknown-section"),
    pytest.param({8: "filters=abc"}, 8, "bad value for 'filters': expected an integer, got 'abc'", id="bad-int"),
    pytest.param({12: "activation=swishy"}, 12, "bad value for 'activation'", id="unknown-activation"),
    pytest.param({27: "layers=-5"}, 27, "'layers' refers to layer -5", id="route-relative-out-of-range"),
    pytest.param({27: "layers=5"}, 27, "'layers' refers to layer 5 (absolute 5)", id="route-absolute-forward"),
    pytest.param({30: "from=-9"}, 30, "'from' refers to layer -9", id="shortcut-out-of-range"),
    pytest.param({34: "filters=24"}, 34, "filters=24 is inconsistent with the [yolo] layer at line 40", id="head-filters"),
    # the mistake may be in [yolo] (classes), but the fix is the conv's filters= line
    pytest.param({43: "classes=3"}, 34, "expected len(mask) * (classes + 5) = 3 * (3 + 5) = 24", id="head-classes"),
    pytest.param({1: "[convolutional]"}, 1, "the first section must be [net]", id="first-not-net"),
    pytest.param({1: "# a comment\nbatch=1\n[net]"}, 2, "before the first section", id="option-before-section"),
    pytest.param({9: "size 3"}, 9, "expected 'key=value', got 'size 3'", id="no-equals"),
    pytest.param({18: "[conv"}, 18, "malformed section header '[conv'", id="malformed-header"),
    pytest.param({13: "filters=8"}, 13, "duplicate option 'filters' (first at line 8)", id="duplicate-key"),
    pytest.param({41: "mask=0,1,3"}, 41, "mask index 3 is out of range for 3 anchors", id="mask-out-of-range"),
    pytest.param({42: "anchors=10,14, 23,27, 37"}, 42, "'anchors' needs pairs", id="odd-anchors"),
    pytest.param({27: "layers=-1,-3"}, 26, "route joins feature maps of different sizes", id="route-size-mismatch"),
    pytest.param({22: "groups=3"}, 22, "filters=32 is not divisible by groups=3", id="groups-not-dividing"),
]


@pytest.mark.parametrize(("changes", "line", "expected"), MALFORMED)
def test_malformed_cfg_points_at_line(tmp_path: Path, changes: dict[int, str], line: int, expected: str) -> None:
    path = write_cfg_text(tmp_path, mutate(changes))
    with pytest.raises(CfgError) as info:
        parse_cfg(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}:"), message
    assert expected in message, message
    assert info.value.line == line
    assert "\n" not in message  # the CLI prints it as one line


# -------------------------------------------------------------------------------------- weights


def shared_dir() -> Path:
    env = os.environ.get("EDGEYOLO_SHARED")
    return Path(env) if env else (Path(__file__).resolve().parents[2] / ".." / "shared").resolve()


@pytest.fixture(scope="module")
def tiny() -> tuple[Path, Path]:
    """(yolov3-tiny.cfg, yolov3-tiny.weights) from the shared folder."""
    shared = shared_dir()
    cfg, weights = shared / "cfg" / "yolov3-tiny.cfg", shared / "models" / "yolov3-tiny.weights"
    for path in (cfg, weights):
        if not path.is_file():
            pytest.skip(f"{path} is missing (set EDGEYOLO_SHARED to the folder holding cfg/ and models/)")
    return cfg, weights


@pytest.fixture(scope="module")
def tiny_bytes(tiny: tuple[Path, Path]) -> bytes:
    return tiny[1].read_bytes()


@pytest.fixture(scope="module")
def reference(tiny: tuple[Path, Path]) -> Darknet:
    """yolov3-tiny with the real weights loaded (read-only for the tests)."""
    model = Darknet(parse_cfg(tiny[0]))
    load_darknet_weights(model, tiny[1])
    return model


def fresh(tiny: tuple[Path, Path]) -> Darknet:
    torch.manual_seed(0)
    return Darknet(parse_cfg(tiny[0]))


def snapshot(model: Darknet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: Darknet, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"a failed load modified {changed[:3]}"


def end_of_layer(model: Darknet, last: int, header: DarknetHeader) -> int:
    """File offset just after conv layer ``last``."""
    return header.nbytes + sum(4 * layer_floats(b) for i, b in model.conv_blocks() if i <= last)


@pytest.mark.parametrize(
    ("after_layer", "into", "ran_out_in"),
    [
        pytest.param(4, 1000, 6, id="early"),  # layers 0, 2, 4 whole, 1000 bytes into layer 6
        pytest.param(21, 100, 22, id="last-layer"),  # everything but 100 bytes of the last layer
    ],
)
def test_truncated_weights(
    tmp_path: Path, tiny: tuple[Path, Path], tiny_bytes: bytes, reference: Darknet, after_layer: int, into: int, ran_out_in: int
) -> None:
    cut = end_of_layer(reference, after_layer, reference.darknet_header) + into
    path = tmp_path / "cut.weights"
    path.write_bytes(tiny_bytes[:cut])
    model = fresh(tiny)
    before = snapshot(model)
    with pytest.raises(WeightsError) as info:
        load_darknet_weights(model, path)
    message = str(info.value)
    assert f"expected {len(tiny_bytes)} bytes, got {cut}" in message, message
    assert f"ran out in layer {ran_out_in} " in message, message
    assert "\n" not in message
    assert_unchanged(model, before)
    assert not hasattr(model, "loaded_layers")


@pytest.mark.parametrize("partial", [False, True], ids=["strict", "partial"])
def test_oversized_weights(tmp_path: Path, tiny: tuple[Path, Path], tiny_bytes: bytes, partial: bool) -> None:
    path = tmp_path / "long.weights"
    path.write_bytes(tiny_bytes + b"\0" * 12)
    model = fresh(tiny)
    before = snapshot(model)
    with pytest.raises(WeightsError) as info:  # --partial means "fewer layers", never "ignore extra bytes"
        load_darknet_weights(model, path, partial=partial)
    message = str(info.value)
    assert "file too long" in message and "belong to a different cfg" in message, message
    assert f"expected {len(tiny_bytes)} bytes, got {len(tiny_bytes) + 12}" in message, message
    assert "12 bytes = 3 floats" in message, message
    assert_unchanged(model, before)


def test_partial_loads_whole_layers_up_to_boundary(
    tmp_path: Path, tiny: tuple[Path, Path], tiny_bytes: bytes, reference: Darknet
) -> None:
    cut = end_of_layer(reference, 8, reference.darknet_header)  # layers 0, 2, 4, 6, 8
    path = tmp_path / "backbone.weights"
    path.write_bytes(tiny_bytes[:cut])

    model = fresh(tiny)
    before = snapshot(model)
    with pytest.raises(WeightsError, match=r"file too short.*ran out in layer 10 .*--partial"):
        load_darknet_weights(model, path)  # without --partial the short file is refused...
    assert_unchanged(model, before)

    load_darknet_weights(model, path, partial=True)  # ...with it, exactly the whole layers load
    assert model.loaded_layers == 5
    ref = reference.state_dict()
    for key, value in model.state_dict().items():
        layer = int(key.split(".")[1])
        if key.endswith("num_batches_tracked"):
            continue
        want = ref[key] if layer <= 8 else before[key]
        assert torch.equal(value, want), key


def test_cutoff(tmp_path: Path, tiny: tuple[Path, Path], tiny_bytes: bytes, reference: Darknet) -> None:
    path = save_darknet_weights(reference, tmp_path / "yolov3-tiny.conv.13", cutoff=13)  # layers 0..12
    assert path.stat().st_size == end_of_layer(reference, 12, reference.darknet_header)

    model = fresh(tiny)
    header = load_darknet_weights(model, path, cutoff=13)
    assert header == reference.darknet_header
    assert model.loaded_layers == 7  # convs 0, 2, 4, 6, 8, 10, 12
    ref = reference.state_dict()
    assert torch.equal(model.module_list[12].conv.weight, ref["module_list.12.conv.weight"])
    assert not torch.equal(model.module_list[13].conv.weight, ref["module_list.13.conv.weight"])

    def refused(file: Path, cutoff: int | None, pattern: str) -> None:
        model = fresh(tiny)
        before = snapshot(model)
        with pytest.raises(WeightsError, match=pattern):
            load_darknet_weights(model, file, cutoff=cutoff)
        assert_unchanged(model, before)

    # the cutoff file without a cutoff: too short, with a hint how to load it
    refused(path, None, r"file too short.*ran out in layer 13 .*use --cutoff N or --partial")
    # a cutoff past the end of the file
    refused(path, 15, r"file too short.*ran out in layer 13 ")
    # the full file with a cutoff: bytes left over after layer 12
    refused(tiny[1], 13, r"file too long.*after the last convolutional layer 12\); .*more than the layers before --cutoff 13")


# ------------------------------------------------------------------------------------------ CLI

CLI = [sys.executable, "-c", "import sys; from edgeyolo.cli.app import main; sys.exit(main())"]


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *expected: str) -> str:
    assert proc.returncode != 0, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), proc.stderr
    assert lines[0].startswith("error:"), proc.stderr
    for text in expected:
        assert text in lines[0], proc.stderr
    return lines[0]


@pytest.fixture()
def small_cfg(tmp_path: Path) -> Path:
    return write_cfg_text(tmp_path, BASE_CFG, "small.cfg")


@pytest.fixture()
def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        pytest.param("missing-cfg", "cfg file not found", id="missing-cfg"),
        pytest.param("missing-weights", "weights file not found", id="missing-weights"),
        pytest.param("truncated-weights", "file too short for the cfg", id="truncated-weights"),
        pytest.param("weights-and-random-init", "either --weights or --random-init", id="weights-and-random-init"),
        pytest.param("img-size", "--img-size must be a positive multiple of 32, got 100", id="img-size-100"),
        # rejected by typer itself (its vendored click errors once escaped as a traceback)
        pytest.param("img-size-not-int", "Invalid value for '--img-size'", id="img-size-not-int"),
    ],
)
def test_cli_export_onnx_refuses(tmp_path: Path, small_cfg: Path, out_dir: Path, case: str, expected: str) -> None:
    weights = tmp_path / "small.weights"
    torch.manual_seed(0)
    data = save_darknet_weights(Darknet(parse_cfg(small_cfg)), weights).read_bytes()
    truncated = tmp_path / "truncated.weights"
    truncated.write_bytes(data[: len(data) - 10])
    out = out_dir / "x.onnx"
    args = {
        "missing-cfg": ["--cfg", tmp_path / "nope.cfg", "--random-init"],
        "missing-weights": ["--cfg", small_cfg, "--weights", tmp_path / "nope.weights"],
        "truncated-weights": ["--cfg", small_cfg, "--weights", truncated],
        "weights-and-random-init": ["--cfg", small_cfg, "--weights", weights, "--random-init"],
        "img-size": ["--cfg", small_cfg, "--random-init", "--img-size", "100"],
        "img-size-not-int": ["--cfg", small_cfg, "--random-init", "--img-size", "abc"],
    }[case]
    proc = run_cli("export", "onnx", *args, "--out", out)
    assert_one_line_error(proc, expected)
    assert not out.exists()
    assert sorted(p.name for p in out_dir.iterdir()) == []  # no temp files either


def test_cli_info_malformed_cfg(tmp_path: Path) -> None:
    bad = write_cfg_text(tmp_path, mutate({8: "filters=abc"}), "bad.cfg")
    proc = run_cli("info", "--cfg", bad)
    assert proc.stdout == ""
    line = assert_one_line_error(proc, f"error: {bad}:8: ", "bad value for 'filters'")
    assert proc.returncode == CfgError.exit_code, line


def test_cli_debug_shows_traceback(tmp_path: Path) -> None:
    bad = write_cfg_text(tmp_path, mutate({8: "filters=abc"}), "bad.cfg")
    proc = run_cli("--debug", "info", "--cfg", bad)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr, proc.stderr
    assert "CfgError" in proc.stderr, proc.stderr
