"""A build's ``report.md``: the stage table, what pruning cut and cost, and what to run on a real board."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def report_markdown(manifest: dict[str, Any]) -> str:
    lines = [
        f"# edgeyolo build: {manifest['target']} ({manifest['precision']})",
        "",
    ]
    if manifest.get("demo"):
        lines += [
            "Embedded demo: edgeyolo-res trained on the synthetic set (`edgeyolo data synth` defaults), shipped with "
            "edgeyolo, through the build's stages. Every mAP@0.5 is on the 300 val images at the export size "
            f"({manifest['recipe']['img_size']} px).",
            "",
        ]
    lines += ["| stage | status | mAP@0.5 | params | BFLOPs | wall s | note |", "|---|---|---|---|---|---|---|"]
    for s in manifest["stages"]:
        m = s.get("metrics", {})
        note = s.get("reason") or ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
            for k, v in m.items() if k not in ("map50", "map50_95", "params", "bflops") and not k.startswith("command.")
        )
        lines.append(
            f"| {s['name']} | {s['status']} | {m.get('map50', '')} | {m.get('params', '')} | {m.get('bflops', '')} "
            f"| {s.get('wall_s') or ''} | {note} |"
        )
    lines += _summary_lines(manifest["stages"])
    if manifest.get("commands"):
        lines += ["", "## Commands run on the board", ""]
        lines += [f"- {name}: `{cmd}`" for name, cmd in manifest["commands"].items()]
    if manifest.get("failed"):
        lines += ["", f"**Failed at stage {manifest['failed']}.**"]
    lines += ["", f"Artifact: `{manifest.get('artifact')}`; total wall time {manifest['wall_s']} s.", ""]
    if manifest.get("artifact") and not manifest.get("failed"):
        lines += next_steps(manifest)
    return "\n".join(lines)


def _summary_lines(stages: list[dict[str, Any]]) -> list[str]:
    """Start against the last scored stage: the parameters cut and the mAP points lost."""
    scored = [s for s in stages if "map50" in s.get("metrics", {}) and "params" in s.get("metrics", {})]
    if len(scored) < 2 or scored[0]["name"] != "source":
        return []
    first, last = scored[0]["metrics"], scored[-1]["metrics"]
    cut = 1 - last["params"] / first["params"]
    return [
        "",
        f"From the start to {scored[-1]['name']}: {cut:.1%} fewer parameters ({first['params']} → {last['params']}), "
        f"BFLOPs {first['bflops']} → {last['bflops']}, mAP@0.5 {first['map50']} → {last['map50']} "
        f"({100 * (last['map50'] - first['map50']):+.1f} points).",
    ]


def next_steps(manifest: dict[str, Any]) -> list[str]:
    """What to run on a real board of the build's target, with this build's paths."""
    from edgeyolo.targets.profiles import get_target

    profile = get_target(manifest["target"])
    family = profile.family_obj
    artifact = manifest["artifact"]
    name = family.device_name(profile)
    data = manifest["request"].get("data") or (str(Path(artifact).parents[2] / "demo-data" / "data.yaml") if manifest.get("demo") else None)
    lines = ["## Next: run it on a real board", ""]
    if family.compile_command:
        return lines + [
            f"Compile the bundle in the Vitis AI image first: `{manifest['commands'].get('quantize+compile', family.compile_command)}`; "
            "then `edgeyolo deploy` the compiled xmodel folder as below.", "",
        ]
    lines += [
        "1. Describe the board in `devices.yaml` (in this folder or `~/.config/edgeyolo/devices.yaml`):",
        "",
        "```yaml",
        "devices:",
        f"  {name}:",
        f"    target: {profile.name}",
        "    host: 192.168.1.20        # the board's address, or a Host alias of ~/.ssh/config",
        f"    user: {family.default_user}",
        "    key_file: ~/.ssh/id_ed25519",
        "```",
        "",
        "2. Check it, copy the model and (on a Jetson) build the TensorRT engine there, then time it and score it on the board:",
        "",
        "```bash",
        f"edgeyolo doctor --device {name}",
        f"edgeyolo deploy --device {name} {artifact}" + (" --engine" if family.builds_engine_on_board else ""),
        f"edgeyolo bench device --device {name} --model {artifact}" + (f" --map {data}" if data else ""),
        "```",
        "",
        "3. On the board, in its workdir (`~/edgeyolo`), the detector on a camera or a video file "
        + ("(`--model` the engine path that `deploy --engine` printed, or the ONNX):" if family.builds_engine_on_board else "(`--model` the ONNX):"),
        "",
        "```bash",
        f"python3 agent.py app --model models/{Path(artifact).name} --source 0 --output out.mp4",
        "```",
        "",
    ]
    if family.bench_hint:
        lines += [family.bench_hint, ""]
    return lines
