"""Vitis AI bundle: a standalone model.py equal to our Darknet, old-Python-clean scripts, DPU refusals."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeyolo.adapt.rewrite import plan_adaptation, transfer_weights, with_leaky_slope
from edgeyolo.contract import Contract
from edgeyolo.errors import UnsupportedLayerError, UsageError, VerificationError
from edgeyolo.export import vitis
from edgeyolo.export.vitis import DpuArch, export_vitis
from edgeyolo.model.cfg import parse_cfg, parse_cfg_text
from edgeyolo.model.checkpoint import load_model
from edgeyolo.model.darknet import Darknet
from edgeyolo.model.init import calibration_batch, random_init, synthetic_images
from edgeyolo.targets.profiles import get_target
from tests.conftest import cfg_path

ZCU104 = DpuArch("zcu104", "0x101000016010407", "ISA1 DPUCZDX8G_ISA1_B4096 (Vitis AI 2.5–3.5)", 256, "ZCU104")
TOLERANCE = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_bundle(tiny_weights, photos, tmp_path_factory):
    model = load_model(cfg_path("yolov3-tiny"), tiny_weights).eval()
    out = tmp_path_factory.mktemp("vitis") / "tiny"
    result = export_vitis(model, out, ZCU104, photos, images=3, vitis_sim_map=0.3125, calib_source="shared/images")
    return model, out, result


def _blobs(photos, size, count=2) -> np.ndarray:
    import cv2

    contract = Contract(size, size)
    return np.concatenate([contract.preprocess(cv2.imread(str(p)))[0] for p in photos[:count]])


def _rel(ref: list[torch.Tensor], got: list[np.ndarray]) -> float:
    return max(float(np.abs(r.numpy() - g).max() / np.abs(r.numpy()).max()) for r, g in zip(ref, got))


def _dpu_reference(model: Darknet, x: np.ndarray) -> list[torch.Tensor]:
    """Our model with the DPU's leaky slope, the way the generated module computes by default."""
    with torch.no_grad():
        return with_leaky_slope(model, vitis.DPU_LEAKY_SLOPE).forward_raw(torch.from_numpy(x))


def _import(path: Path):
    return vitis._import_generated(path)


# ------------------------------------------------------------------------------------------ the bundle


def test_bundle_layout(tiny_bundle):
    _, out, result = tiny_bundle
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(result.files) == [
        "README.md", "arch.json", "calib", "compile.sh", "model.cfg", "model.py", "model_state.pt",
        "quantize.py", "quantize.sh", "vitis.json", "yolov3_tiny.prototxt",
    ]
    assert len(list((out / "calib").iterdir())) == result.calib_images == 3
    assert json.loads((out / "arch.json").read_text()) == {"fingerprint": "0x101000016010407"}
    assert result.max_rel_error <= TOLERANCE and result.leaky_layers == 11
    assert result.warnings and "26/256" in result.warnings[0] and "fine-tuning" in result.warnings[0].lower()
    assert 0 < result.leaky_delta < 0.1  # measured, small, and not zero
    manifest = json.loads((out / "vitis.json").read_text())
    assert manifest["xmodel"] == "quantize_result/EdgeYoloModel_int.xmodel" and manifest["vitis_sim_map"] == 0.3125
    parse_cfg(out / "model.cfg")
    compile_sh = (out / "compile.sh").read_text()
    assert "vai_c_xir -x \"$xmodel\" -a arch.json -o out -n yolov3_tiny" in compile_sh
    assert "xmodel=quantize_result/EdgeYoloModel_int.xmodel" in compile_sh
    readme = (out / "README.md").read_text()
    assert f"docker/vitis-ai/run.sh {out} --vai 3.0" in readme and "docker run --rm" in readme
    assert "--vitis-sim" in readme and "0.3125" in readme and "@@" not in readme


def test_scripts_parse_in_bash(tiny_bundle):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not found")
    _, out, _ = tiny_bundle
    for script in ("quantize.sh", "compile.sh"):
        result = subprocess.run([bash, "-n", str(out / script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


def test_python_files_run_on_python_37(tiny_bundle):
    vermin = shutil.which("vermin")
    if vermin is None:
        pytest.skip("vermin is not installed (pip install vermin)")
    _, out, _ = tiny_bundle
    walrus = out.parent / "walrus.py"
    walrus.write_text("if (n := 3):\n    pass\n")  # proves the check can fail
    # "3.7-" = runs on 3.7 or older; a bare "3.7" would demand that the file *needs* exactly 3.7
    for path, ok in ((out / "model.py", True), (out / "quantize.py", True), (walrus, False)):
        result = subprocess.run(
            [vermin, "--target=3.7-", "--no-tips", "--violations", str(path)], capture_output=True, text=True
        )
        assert (result.returncode == 0) == ok, f"{path.name}:\n{result.stdout}{result.stderr}"


STANDALONE = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoEdgeYolo(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "edgeyolo" or name.startswith("edgeyolo."):
                raise ImportError("edgeyolo is blocked: the bundle must stand alone")
            return None

    sys.meta_path.insert(0, NoEdgeYolo())
    import numpy as np
    import torch
    from model import EdgeYoloModel, HEADS

    model = EdgeYoloModel()
    model.load_state_dict(torch.load("model_state.pt", map_location="cpu"))
    model.eval()
    x = torch.from_numpy(np.load(sys.argv[1]))
    with torch.no_grad():
        traced = torch.jit.trace(model, x[:1])
        outs = [[t.numpy() for t in traced(x[i:i + 1])] for i in range(x.shape[0])]
    np.savez(sys.argv[2], *[np.concatenate([o[h] for o in outs]) for h in range(len(HEADS))])
    assert not [m for m in sys.modules if m.startswith("edgeyolo")]
    print("ok")
    """
)


def test_standalone_module_equals_our_model(tiny_bundle, photos, tmp_path):
    """In a fresh interpreter with edgeyolo blocked: import, load, trace; equal to Darknet at 26/256."""
    model, out, _ = tiny_bundle
    x = _blobs(photos, 416)
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(tmp_path / "x.npy"), str(tmp_path / "y.npz")],
        cwd=out, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
    got = list(np.load(tmp_path / "y.npz").values())
    ref = _dpu_reference(model, x)
    assert [tuple(r.shape) for r in ref] == [g.shape for g in got] == [(2, 255, 13, 13), (2, 255, 26, 26)]
    assert _rel(ref, got) <= TOLERANCE
    assert (torch.sigmoid(ref[0][:, 4::85]) > 0.5).any()  # real detections, not an empty comparison


def test_prototxt_anchors_match_the_cfg(tiny_bundle):
    model, out, _ = tiny_bundle
    text = (out / "yolov3_tiny.prototxt").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    names = re.findall(r'layer_name: "([^"]+)"', body)
    biases = [float(v) for v in re.findall(r"biases: ([0-9.]+)", body)]
    count = int(re.search(r"anchorCnt: (\d+)", body).group(1))
    assert int(re.search(r"num_classes: (\d+)", body).group(1)) == 80
    assert re.search(r"model_type : YOLOv3", body) and "test_mAP: false" in body
    assert body.count("mean: 0.0") == 3 and body.count(f"scale: {1 / 255!r}") == 3
    # the library visits layer_name last-first and takes the k-th biases block for the k-th visit
    by_tensor = {name: biases[2 * count * k : 2 * count * (k + 1)] for k, name in enumerate(reversed(names))}
    heads = model.cfg.yolo_layers
    assert len(names) == len(heads) == 2
    for y in heads:
        (name,) = [n for n in names if n.endswith(f"_conv{y.index - 1}")]  # the conv feeding this [yolo]
        assert by_tensor[name] == [v for a in y.masked_anchors for v in a]
    source = (out / "model.py").read_text()
    assert all(f"self.{n} = nn.Conv2d(" in source for n in names)


# ------------------------------------------------------------------------------------------ other cfgs


def _adapted_res(seed: int = 0) -> Darknet:
    """edgeyolo-res (shortcuts, SPP, a CSP split) made DPU-ready by `adapt`, seeded calibrated random weights."""
    model = Darknet(parse_cfg(cfg_path("edgeyolo-res")))
    contract = Contract(256, 256)
    random_init(model, calibration_batch(contract, synthetic_images(4, 256, 256, seed)), seed=seed)
    plan = plan_adaptation(model.cfg, get_target("zcu104"), "3.0")
    return transfer_weights(model.eval(), plan)


def test_res_with_shortcuts_matches(photos, tmp_path):
    model = _adapted_res()
    out = tmp_path / "res"
    result = export_vitis(model, out, ZCU104, photos, images=2)
    assert result.max_rel_error <= TOLERANCE
    source = (out / "model.py").read_text()
    assert " + x" in source and "torch.cat(" in source and "nn.MaxPool2d(13, 1, padding=6)" in source
    module = _import(out / "model.py")
    gen = module.EdgeYoloModel().eval()
    gen.load_state_dict(torch.load(out / "model_state.pt", weights_only=True))
    x = _blobs(photos, 256)
    with torch.no_grad():
        got = [t.numpy() for t in torch.jit.trace(gen, torch.from_numpy(x))(torch.from_numpy(x))]
    assert _rel(_dpu_reference(model, x), got) <= TOLERANCE


def test_a_wrong_module_fails_verification_and_leaves_nothing(photos, tmp_path, monkeypatch):
    """Swap two inputs of the SPP concat (same shapes, different numbers): verification must catch it."""
    model = _adapted_res()
    real = vitis.generate_model

    def swapped(cfg, name="model"):
        gen = real(cfg, name)
        match = re.search(r"torch\.cat\(\[(x\d+), (x\d+), (x\d+), (x\d+)\], 1\)", gen.source)
        assert match, "the SPP concat was not found"
        a, b, c, d = match.groups()
        return vitis.GeneratedModel(gen.source.replace(match.group(0), f"torch.cat([{b}, {a}, {c}, {d}], 1)"),
                                    gen.key_map, gen.head_modules, gen.leaky_layers)

    monkeypatch.setattr(vitis, "generate_model", swapped)
    out = tmp_path / "bad"
    with pytest.raises(VerificationError, match="differs from edgeyolo's model"):
        export_vitis(model, out, ZCU104, photos, images=2)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind


def test_route_groups_are_refused(photos, tmp_path):
    model = Darknet(parse_cfg(cfg_path("yolov4-tiny")))
    with pytest.raises(UnsupportedLayerError) as info:
        export_vitis(model, tmp_path / "v4t", ZCU104, photos, images=1)
    message = str(info.value)
    groups = [layer.index for layer in model.cfg.layers if getattr(layer, "groups", 1) > 1 and layer.section == "route"]
    assert len(groups) == 3 and all(f"layer {i} " in message for i in groups)
    assert "groups=2" in message and "edgeyolo adapt --target zcu104" in message
    assert not (tmp_path / "v4t").exists()


MISH_CFG = """
[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=mish

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=swish

[convolutional]
size=1
stride=1
filters=18
activation=linear

[yolo]
mask=0,1,2
anchors=4,5, 8,9, 12,14
classes=1
"""


def test_mish_and_swish_are_refused(photos, tmp_path):
    model = Darknet(parse_cfg_text(MISH_CFG, "mish.cfg"))
    with pytest.raises(UnsupportedLayerError) as info:
        export_vitis(model, tmp_path / "m", ZCU104, photos, images=1)
    message = str(info.value)
    assert "layer 0 (line 13): [convolutional] activation=mish" in message
    assert "layer 1 (line 21): [convolutional] activation=swish" in message
    assert "edgeyolo adapt --target zcu104" in message


def test_bad_requests(tiny_bundle, photos, tmp_path):
    model, out, _ = tiny_bundle
    with pytest.raises(UsageError, match="not an empty folder"):
        export_vitis(model, out, ZCU104, photos, images=1)  # never overwrites a bundle
    with pytest.raises(UsageError, match="--vai"):
        export_vitis(model, tmp_path / "x", ZCU104, photos, vai="2.0")
    with pytest.raises(UsageError, match="fingerprint"):
        DpuArch("zcu104", "101000016010407")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(UsageError, match="no readable calibration images"):
        export_vitis(model, tmp_path / "y", ZCU104, [bad])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jpg"]


def test_pool_plans_are_exact():
    """Every darknet max-pool geometry the exporter accepts computes darknet's windows."""
    from edgeyolo.model.cfg import MaxPoolSpec
    from edgeyolo.model.darknet import MaxPool

    gen = torch.Generator().manual_seed(0)
    for size, stride, padding, n in [(2, 1, 1, 13), (2, 2, 1, 13), (2, 2, 1, 16), (3, 2, 2, 15), (5, 1, 4, 8), (3, 1, 0, 9)]:
        spec = MaxPoolSpec(0, {}, size=size, stride=stride, padding=padding)
        plan = vitis.pool_plan(spec, n, n)
        assert plan is not None, (size, stride, padding, n)
        x = torch.randn(1, 2, n, n, generator=gen) - 3.0  # negative: -inf padding must matter
        pool = torch.nn.MaxPool2d(size, stride, padding=plan.padding, ceil_mode=plan.ceil_mode)
        got = pool(x)[:, :, plan.rows[0]:plan.rows[1], plan.cols[0]:plan.cols[1]]
        assert torch.equal(got, MaxPool(spec)(x)), (size, stride, padding, n)


def test_cli_writes_a_bundle(tiny_weights, photos, tmp_path, capsys):
    from edgeyolo.cli.app import main

    out = tmp_path / "u96"
    code = main([
        "export", "vitis", "--target", "ultra96", "--cfg", str(cfg_path("yolov3-tiny")), "--weights", str(tiny_weights),
        "--calib", str(photos[0].parent), "--images", "2", "--img-size", "320", "--out", str(out),
    ])
    assert code in (0, None), capsys.readouterr()
    assert json.loads((out / "arch.json").read_text()) == {"fingerprint": "0x101000016010404"}
    assert "x11 = self.pool11(x10)[:, :, 1:11, 1:11]" in (out / "model.py").read_text()  # fixed at 320
    assert f"docker/vitis-ai/run.sh {out} --vai 3.0" in capsys.readouterr().out


def test_dpu_arch_comes_from_the_target_profile():
    from edgeyolo.adapt.dpu import dpu_arch

    assert dpu_arch("zcu104", "3.0").fingerprint == "0x101000016010407"  # ISA1 B4096 (deploy-targets.md §3b)
    assert dpu_arch("zcu104", "2.0").max_pool_kernel == 8  # ISA0: pool kernels up to 8
    assert dpu_arch("ultra96", "3.0").fingerprint == "0x101000016010404"
    assert dpu_arch("zcu104", "2.5", "0x101000056010407").fingerprint == "0x101000056010407"
    with pytest.raises(UsageError, match="no Xilinx DPU"):
        dpu_arch("jetson-nano", "3.0")