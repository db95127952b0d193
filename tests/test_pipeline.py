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


def test_host_int8_build_quantizes_at_export_in_the_onnxruntime_layout(tmp_path: Path) -> None:
    from collections import Counter

    import onnx

    from edgeyolo.data.synth import make_synthetic

    data = make_synthetic(tmp_path / "synth", classes=12, train=16, val=6, img_size=64, seed=0).data_yaml
    out = tmp_path / "build"
    recipe = _recipe(calib_images=8, evaluate=True, prune_method="none")
    manifest = Build(BuildRequest(target="host", out=out, cfg="edgeyolo-res", data=str(data), precision="int8", recipe=recipe)).run()
    stages = {s["name"]: s for s in manifest["stages"]}
    assert manifest["precision"] == "int8"
    assert stages["quantize"]["status"] == "skipped" and "export stage" in stages["quantize"]["reason"]
    export = stages["export"]["metrics"]
    assert export["int8_layout"] == "onnxruntime" and export["int8_min_code_match"] >= 0.999 and export["calib_images"] == 8
    assert 0.0 <= export["map50"] <= 1.0
    ops = Counter(n.op_type for n in onnx.load(manifest["artifact"]).graph.node)
    assert ops["QuantizeLinear"] > ops["Conv"] > 0  # every tensor quantized, not only conv inputs


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


def test_build_prunes_to_a_latency_budget(tmp_path: Path, monkeypatch) -> None:
    """--latency-ms replaces the percent: widths picked by the host latency table (speed is a benchmark
    matter, so only the plan is checked here: the prediction meets the budget, widths stay aligned)."""
    from edgeyolo.bench import latency
    from edgeyolo.bench.latency import latency_table

    monkeypatch.setattr(latency, "DAMAGE_IMAGES", 8)  # the loss rank's sensitivity on 8 images, not 64: the plumbing only
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
    assert m["latency_measured_on"] == "host onnxruntime" and m["latency_rank"] == "loss"
    pruned = load_model(out / "stages" / "03-prune" / "model.cfg")
    widths = [c.filters for c in pruned.cfg.conv_layers]
    assert sum(widths) < sum(c.filters for c in model.cfg.conv_layers)
    with pytest.raises(EdgeYoloError, match="latency-ms must be positive"):
        BuildRequest(target="host", out=out, cfg="edgeyolo-res", latency_ms=0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("s: strong", "s must be a number"),
        ("sr_penalty: bogus", "sr_penalty must be one of l1, polar, gradual"),
        ("cache: maybe", "cache must be a bool"),
        ("batch_size: 2.5", "batch_size must be an int"),
        ("sr_rank: random", "sr_rank must be one of magnitude, taylor"),
        ("prune_method: slimm", "prune_method must be one of none, "),
        ("train_img_size: 100", "train_img_size must be a positive multiple of 32"),
        ("aug: {scale: 3}", "scale"),
    ],
)
def test_recipe_values_are_checked_with_their_type_and_range_at_file_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"img_size: 160\n{line}\n")
    with pytest.raises(CfgError, match=rf"recipe\.yaml:2.*{message}"):
        Recipe.from_yaml(path)


def test_the_demo_recipe_exports_at_a_size_the_profile_lists_and_trains_smaller() -> None:
    from edgeyolo.pipeline import demo_recipe
    from edgeyolo.targets.profiles import get_target

    recipe = demo_recipe("jetson-nano")
    assert recipe.img_size in get_target("jetson-nano").input_sizes and recipe.img_size == 288
    assert recipe.training_size == 160 and recipe.sparse_epochs > 0 and recipe.finetune_epochs > 0
    assert recipe.percent == "sparse" and recipe.sr_rank == "taylor"
    assert demo_recipe("jetson-nano", img_size=416).img_size == 416


def test_a_long_stage_says_it_is_running_at_least_every_heartbeat() -> None:
    import time as _time

    lines: list[str] = []
    build = Build(BuildRequest(target="host", out=Path("unused"), cfg="edgeyolo-res", recipe=_recipe()), echo=lines.append)
    with build._heartbeat("sparse", every=1.0):
        _time.sleep(3.6)
    beats = [line for line in lines if line.startswith("  [sparse] running")]
    assert 2 <= len(beats) <= 4, lines
    lines.clear()
    with build._heartbeat("prune", every=1.0):
        for _ in range(6):  # a stage that prints on its own gets no extra lines
            build.echo("epoch line")
            _time.sleep(0.5)
    assert lines == ["epoch line"] * 6


def test_fp16_rounded_onnx_holds_the_fp16_values_of_the_weights(tmp_path: Path) -> None:
    import numpy as np
    from onnx import numpy_helper

    from edgeyolo.export.onnx import export_onnx
    from edgeyolo.model.checkpoint import load_model
    from edgeyolo.model.zoo import resolve_cfg
    from edgeyolo.pipeline import _fp16_rounded

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    path = export_onnx(load_model(resolve_cfg("edgeyolo-mobile")), tmp_path / "m.onnx", img_size=64).path
    rounded = _fp16_rounded(path, tmp_path / "r.onnx")
    before = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(rounded)).graph.initializer}
    changed = 0
    for name, value in before.items():
        if value.dtype == np.float32:
            assert np.array_equal(after[name], value.astype(np.float16).astype(np.float32)), name
            changed += int(not np.array_equal(after[name], value))
    assert changed > 0  # fp32 weights are not all fp16-exact: the copy really differs


def test_build_scores_the_start_records_gamma_before_and_after_and_scores_the_exported_file(tmp_path: Path) -> None:
    from edgeyolo.data.synth import make_synthetic

    data = make_synthetic(tmp_path / "synth", classes=12, train=16, val=6, img_size=64, seed=0).data_yaml
    out = tmp_path / "build"
    recipe = _recipe(
        img_size=96, train_img_size=64, sparse_epochs=1, s=0.05, sr_penalty="gradual", sr_rank="taylor",
        sr_schedule="dynamic", sr_target=0.3, prune_method="slim", percent=0.2, evaluate=True, batch_size=8,
    )
    manifest = Build(BuildRequest(target="jetson-nano", out=out, cfg="edgeyolo-res", data=str(data), recipe=recipe)).run()
    stages = {s["name"]: s for s in manifest["stages"]}
    assert manifest["stages"][0]["name"] == "source" and "map50" in stages["source"]["metrics"]
    sparse = stages["sparse"]["metrics"]
    assert 0.0 <= sparse["gamma_below_1e-2_before"] <= 1.0 and 0.0 <= sparse["gamma_below_1e-2_after"] <= 1.0
    run = json.loads((out / "stages" / "02-sparse" / "run" / "config.json").read_text())
    assert run["img_size"] == 64 and run["sr_rank"] == "taylor"  # trained at train_img_size
    export = stages["export"]["metrics"]
    assert export["scored_with"].startswith("onnxruntime, fp16") and 0.0 <= export["map50"] <= 1.0
    assert export["params"] < stages["source"]["metrics"]["params"]
    report = (out / "report.md").read_text()
    artifact = manifest["artifact"]
    assert "fewer parameters" in report and "## Next: run it on a real board" in report
    assert f"edgeyolo deploy --device nano {artifact} --engine" in report
    assert f"edgeyolo bench device --device nano --model {artifact} --map {data}" in report
    again = Build(BuildRequest(target="jetson-nano", out=out, cfg="edgeyolo-res", data=str(data), recipe=recipe)).run()
    assert {s["name"]: s["status"] for s in again["stages"]}["source"] == "cached"
    assert again["stages"][0]["metrics"] == manifest["stages"][0]["metrics"]


def test_build_refuses_broken_labels_before_training(tmp_path: Path) -> None:
    from edgeyolo.data.synth import make_synthetic
    from edgeyolo.errors import InputFileError

    data = make_synthetic(tmp_path / "synth", classes=12, train=8, val=4, img_size=64, seed=0).data_yaml
    label = sorted((tmp_path / "synth" / "labels" / "train").glob("*.txt"))[0]
    label.write_text(label.read_text() + "3 0.5 0.5 0.2\n")  # four fields
    out = tmp_path / "build"
    request = BuildRequest(target="host", out=out, cfg="edgeyolo-res", data=str(data), recipe=_recipe(sparse_epochs=1))
    with pytest.raises(InputFileError, match=label.name):
        Build(request).run()
    assert not (out / "stages" / "02-sparse" / "run").exists()
