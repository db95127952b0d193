"""bench host measures every stage for every backend (timings themselves are not asserted)."""
import json
import subprocess
import sys

from tests.conftest import cfg_path


def test_bench_host_json(photos, tmp_path):
    cmd = [
        sys.executable, "-c", "import sys; from edgeyolo.cli.app import main; sys.exit(main())",
        "bench", "host", "--cfg", str(cfg_path("edgeyolo-mobile")), "--images", str(photos[0].parent),
        "--runs", "3", "--threads", "1", "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["gemm_gflops_per_s"] > 0 and abs(data["gflops"] - 0.297) < 0.01
    assert [r["backend"] for r in data["results"]] == ["onnxruntime", "onnxruntime-int8", "opencv", "torch"]
    for r in data["results"]:
        assert r["runs"] == 3 and r["threads"] == 1
        for stage in ("pre", "infer", "post", "total"):
            assert 0 < r[stage]["median_ms"] <= r[stage]["p90_ms"]
        assert r["total"]["median_ms"] >= r["infer"]["median_ms"]
        assert r["gflops_per_s"] > 0


def test_bench_host_takes_the_cfg_from_a_checkpoint(photos, tmp_path, capsys):
    from edgeyolo.cli.app import main
    from edgeyolo.model.checkpoint import save_checkpoint
    from tests.compress.quant.conftest import res_model

    ckpt = save_checkpoint(res_model(), tmp_path / "res.safetensors")
    args = ["bench", "host", "--weights", str(ckpt), "--images", str(photos[0].parent), "--runs", "2", "--threads", "1"]
    assert main([*args, "--backend", "onnxruntime", "--backend", "opencv", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cfg"] == str(ckpt) and [r["backend"] for r in data["results"]] == ["onnxruntime", "opencv"]
    assert main(["bench", "host", "--images", str(photos[0].parent), "--runs", "1"]) == 2
    assert "--cfg is required" in capsys.readouterr().err
