"""Profiles, checks and every tool-output parser import without torch (they run where torch is absent)."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

MODULES = (
    "edgeyolo.targets.profiles",
    "edgeyolo.adapt.check",
    "edgeyolo.adapt.rewrite",
    "edgeyolo.targets.parsing",
    "edgeyolo.targets.jetson.trtexec",
    "edgeyolo.targets.jetson.tegrastats",
    "edgeyolo.targets.jetson.nvpmodel",
    "edgeyolo.targets.zynq.xdputil",
    "edgeyolo.targets.zynq.vai_c",
)


def test_target_modules_import_without_torch():
    code = textwrap.dedent(
        f"""
        import importlib, importlib.abc, sys

        class NoTorch(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked")
                return None

        sys.meta_path.insert(0, NoTorch())
        for name in {MODULES!r}:
            importlib.import_module(name)
        from edgeyolo.model.cfg import parse_cfg_text
        from edgeyolo.adapt.rewrite import plan_adaptation
        from edgeyolo.targets.profiles import get_target
        cfg = parse_cfg_text("[net]\\nwidth=32\\nheight=32\\n[convolutional]\\nfilters=8\\nactivation=mish\\n"
                             "[route]\\nlayers=-1\\ngroups=2\\ngroup_id=1\\n")
        plan = plan_adaptation(cfg, get_target("zcu104"))
        assert [c.kind for c in plan.changes][:2] == ["route-split-to-conv", "activation"], plan.changes
        assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
        print("ok")
        """
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
