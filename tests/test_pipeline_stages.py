"""Build stages are registered classes: a new stage is one class and its registration, seen by the plan,
the CLI's dry run and a build, in its place after the stages registered before it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import edgeyolo.pipeline as pipeline
from edgeyolo.cli.app import main
from edgeyolo.pipeline import Artifact, Build, BuildRequest, Recipe
from edgeyolo.pipeline.stages import BUILD_STAGES, Stage, common_params

BUILT_IN = ("adapt", "train", "sparse", "prune", "finetune", "quantize", "export", "deploy")


class StampStage(Stage):
    """Writes the exported file's name next to it: a stage that needs nothing but the artifact."""

    name = "stamp"

    def params(self, build: Build) -> dict[str, Any]:
        return {**common_params(build), "target": build.profile.name}

    def skip_reason(self, build: Build) -> str | None:
        return None

    def run(self, build: Build, art: Artifact, folder: Path) -> tuple[Artifact, dict[str, Any]]:
        (folder / "stamp.txt").write_text(Path(art.files["onnx"]).name, encoding="utf-8")
        return Artifact(art.folder, {**art.files, "stamp": str(folder / "stamp.txt")}), {"stamped": True}


@pytest.fixture
def stamp_stage():
    BUILD_STAGES.register("stamp")(StampStage)
    try:
        yield StampStage
    finally:
        BUILD_STAGES.remove("stamp")


def test_the_built_in_stages_are_registered_in_build_order() -> None:
    assert pipeline.STAGES == BUILT_IN
    assert [name for name, _ in BUILD_STAGES.in_order()] == list(BUILT_IN)
    assert all(BUILD_STAGES.get(name).name == name for name in BUILT_IN)


def test_a_registered_stage_shows_in_the_dry_run_in_its_place(stamp_stage, tmp_path: Path, capsys) -> None:
    code = main(["build", "--target", "jetson-nano", "--demo", "--dry-run", "--out", str(tmp_path / "b")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    names = [line.split()[0] for line in lines[1:]]
    assert names == [*BUILT_IN, "stamp"]
    assert lines[-1] == "stamp     run" and lines[-2] == "deploy    skip: no --device named"
    assert not (tmp_path / "b").exists()


def test_a_registered_stage_runs_in_a_build_in_its_numbered_folder(stamp_stage, tmp_path: Path) -> None:
    out = tmp_path / "build"
    recipe = Recipe(img_size=64, prune_method="regular", percent=0.3, workers=0, evaluate=False)
    manifest = Build(BuildRequest(target="host", out=out, cfg="edgeyolo-res", recipe=recipe)).run()
    stages = {s["name"]: s for s in manifest["stages"]}
    assert [s["name"] for s in manifest["stages"]] == ["source", *BUILT_IN, "stamp"]
    assert stages["stamp"]["status"] == "done" and stages["stamp"]["metrics"] == {"stamped": True}
    folder = out / "stages" / f"{len(BUILT_IN):02d}-stamp"
    assert (folder / "stamp.txt").read_text() == Path(manifest["artifact"]).name
    assert json.loads((folder / "stage.json").read_text())["outputs"] == {"stamp": "stamp.txt"}
    assert "| stamp | done |" in (out / "report.md").read_text()
    again = Build(BuildRequest(target="host", out=out, cfg="edgeyolo-res", recipe=recipe)).run()
    assert {s["name"]: s["status"] for s in again["stages"]}["stamp"] == "cached"


def test_a_removed_stage_is_gone_from_the_plan(tmp_path: Path, capsys) -> None:
    BUILD_STAGES.register("stamp")(StampStage)
    assert pipeline.STAGES == (*BUILT_IN, "stamp")
    BUILD_STAGES.remove("stamp")
    assert pipeline.STAGES == BUILT_IN and "stamp" not in BUILD_STAGES
    main(["build", "--target", "jetson-nano", "--demo", "--dry-run", "--out", str(tmp_path / "b")])
    assert "stamp" not in capsys.readouterr().out


def test_a_cached_stage_without_a_model_passes_on_the_source_model(stamp_stage, tmp_path: Path) -> None:
    """Only the source writes a model (no training, no pruning): on the second run the export stage comes
    back from its cache with the source's model, so the stamp after it is cached too rather than re-run
    (it used to get no model folder, a changed key and a needless re-run)."""
    out = tmp_path / "build"
    recipe = Recipe(img_size=64, prune_method="none", workers=0, evaluate=False)
    first = Build(BuildRequest(target="host", out=out, cfg="edgeyolo-res", recipe=recipe)).run()
    assert {s["name"]: s["status"] for s in first["stages"]}["stamp"] == "done"
    again = Build(BuildRequest(target="host", out=out, cfg="edgeyolo-res", recipe=recipe)).run()
    statuses = {s["name"]: s["status"] for s in again["stages"]}
    assert statuses["export"] == "cached" and statuses["stamp"] == "cached", statuses
