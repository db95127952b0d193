"""``edgeyolo build``: recipe errors, stage plan, caching by input hash, the manifest and report."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from edgeyolo.cli.app import main
from edgeyolo.errors import CfgError, EdgeYoloError
from edgeyolo.pipeline import Build, BuildRequest, Recipe


def _recipe(**kw) -> Recipe:
    base = {"img_size": 64, "prune_method": "regular", "percent": 0.3, "workers": 0, "evaluate": False}
    return Recipe(**{**base, **kw})


def test_recipe_yaml_errors_name_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("img_size: 160\nsparse_epoch: 3\n")
    with pytest.raises(CfgError, match=r"recipe\.yaml:2.*unknown recipe key 'sparse_epoch'"):
        Recipe.from_yaml(path)
    path.write_text("img_size: 160\n\nprune_mode: 5\n")
    with pytest.raises(CfgError, match=r"recipe\.yaml:3.*prune_mode must be 0, 1 or 2"):
        Recipe.from_yaml(path)
    path.write_text("img_size: 160\npercent: auto\nfinetune_epochs: 2\n")
    recipe = Recipe.from_yaml(path)
    assert (recipe.img_size, recipe.percent, recipe.finetune_epochs) == (160, "auto", 2)


def test_jetson_nano_build_exports_checked_onnx_and_the_trtexec_command(tmp_path: Path) -> None:
    out = tmp_path / "build"
    request = BuildRequest(target="jetson-nano", out=out, cfg="edgeyolo-res", recipe=_recipe())
    manifest = Build(request).run()
    assert manifest["precision"] == "fp16"
    status = {s["name"]: s["status"] for s in manifest["stages"]}
    assert status["prune"] == "done" and status["export"] == "done"
    assert status["quantize"] == "skipped" and status["deploy"] == "skipped" and status["train"] == "skipped"
    reasons = {s["name"]: s["reason"] for s in manifest["stages"]}
    assert reasons["deploy"] == "no --device named" and "fp16" in reasons["quantize"]
    onnx_path = Path(manifest["artifact"])
    model = onnx.load(str(onnx_path))
    assert model.opset_import[0].version <= 13  # what TensorRT 8.2 parses
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64]  # static shape
    command = manifest["commands"]["engine"]
    assert "trtexec" in command and "--fp16" in command and onnx_path.name in command and "--int8" not in command
    # pruned at the target's channel multiple: every pruned conv keeps a multiple of 8
    prune_report = json.loads((out / "stages" / "03-prune" / "prune_report.json").read_text())
    kept = [row["filters_after"] for row in prune_report["layers"] if row["status"] == "pruned"]
    assert kept and all(k % 8 == 0 for k in kept)
    assert (out / "report.md").read_text().count("| prune | done |") == 1

    again = Build(request).run()  # same inputs: every run stage is reused
    assert {s["name"]: s["status"] for s in again["stages"]}["export"] == "cached"
    assert {s["name"]: s["status"] for s in again["stages"]}["prune"] == "cached"

    changed = Build(BuildRequest(target="jetson-nano", out=out, cfg="edgeyolo-res", recipe=_recipe(percent=0.2))).run()
    status = {s["name"]: s["status"] for s in changed["stages"]}
    assert status["prune"] == "done" and status["export"] == "done"  # the prune input changed, and what follows


def test_int8_on_an_fp16_only_board_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(EdgeYoloError, match="(?i)int8"):
        Build(BuildRequest(target="jetson-nano", out=tmp_path, cfg="edgeyolo-res", precision="int8", recipe=_recipe()))
    assert not (tmp_path / "manifest.json").exists()


def test_build_cli_dry_run_lists_stages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["build", "--target", "jetson-nano", "--cfg", "edgeyolo-res", "--out", str(tmp_path / "b"), "--dry-run"])
    text = capsys.readouterr().out
    assert code == 0
    assert "deploy    skip: no --device named" in text and "export    run" in text
    assert not (tmp_path / "b").exists()


def test_zcu104_build_adapts_quantizes_like_the_dpu_and_writes_a_vitis_bundle(tmp_path: Path) -> None:
    from edgeyolo.data.synth import make_synthetic

    data = make_synthetic(tmp_path / "synth", classes=12, train=16, val=6, img_size=64, seed=0).data_yaml
    out = tmp_path / "build"
    recipe = _recipe(calib_images=8, percent="auto", evaluate=True)
    manifest = Build(BuildRequest(target="zcu104", out=out, cfg="edgeyolo-res", data=str(data), recipe=recipe, device="zcu")).run()
    stages = {s["name"]: s for s in manifest["stages"]}
    assert manifest["precision"] == "int8"
    # edgeyolo-res has a CSP channel split the DPU cannot run: adapt rewrites it (exactly) first
    assert stages["adapt"]["status"] == "done" and stages["adapt"]["metrics"]["changes"] >= 1
    adapted = (out / "stages" / "00-adapt" / "model.cfg").read_text()
    assert "groups=2" not in adapted.replace(" ", "")
    kept = [r["filters_after"] for r in json.loads((out / "stages" / "03-prune" / "prune_report.json").read_text())["layers"] if r["status"] == "pruned"]
    assert kept and all(k % 16 == 0 for k in kept)  # the B4096 DPU's channel multiple
    q = stages["quantize"]["metrics"]
    assert q["scheme"] == "pow2" and q["vitis_sim"] is True and 0.0 <= q["map50"] <= 1.0
    bundle = Path(manifest["artifact"])
    assert (bundle / "model.py").is_file() and json.loads((bundle / "arch.json").read_text())["fingerprint"] == "0x101000016010407"
    assert "docker/vitis-ai/run.sh" in manifest["commands"]["quantize+compile"]
    assert stages["deploy"]["status"] == "skipped" and "Vitis AI image" in stages["deploy"]["reason"]


def test_build_prunes_to_a_latency_budget(tmp_path: Path) -> None:
    """--latency-ms replaces the percent: widths picked by the host latency table (speed is a benchmark
    matter, so only the plan is checked here: the prediction meets the budget, widths stay aligned)."""
    from edgeyolo.bench.latency import latency_table
    from edgeyolo.model.checkpoint import load_model

    recipe = _recipe(img_size=96)
    from edgeyolo.model.zoo import resolve_cfg

    model = load_model(resolve_cfg("edgeyolo-res"))
    out = tmp_path / "build"
    full = latency_table(model, 96, multiple=8, cache_dir=out / "latency-table").full_ms  # the build reuses this table
    request = BuildRequest(target="host", out=out, cfg="edgeyolo-res", recipe=recipe, latency_ms=0.85 * full)
    manifest = Build(request).run()
    m = {s["name"]: s for s in manifest["stages"]}["prune"]["metrics"]
    assert m["latency_predicted_ms"] <= 0.85 * full * 1.25 and m["narrowed_convs"] > 0  # the correction loop may re-aim
    assert m["latency_measured_on"] == "host onnxruntime"
    pruned = load_model(out / "stages" / "03-prune" / "model.cfg")
    widths = [c.filters for c in pruned.cfg.conv_layers]
    assert sum(widths) < sum(c.filters for c in model.cfg.conv_layers)
    with pytest.raises(EdgeYoloError, match="latency-ms must be positive"):
        BuildRequest(target="host", out=out, cfg="edgeyolo-res", latency_ms=0)
