"""tegrastats, nvpmodel -q and jetson_clocks --show parsed from real board output."""
from __future__ import annotations

import pytest

from edgeyolo.targets.jetson.nvpmodel import parse_jetson_clocks, parse_nvpmodel
from edgeyolo.targets.jetson.tegrastats import parse_tegrastats, summarize
from edgeyolo.targets.parsing import ToolOutputError
from tests.targets.boardlogs import board_log


def test_tegrastats_nano_blockquoted_lines():
    samples = parse_tegrastats(board_log("tegrastats-nano.txt"))
    assert len(samples) == 4
    s = samples[1]
    assert (s.ram_used_mb, s.ram_total_mb, s.swap_used_mb) == (1504, 3956, None)
    assert [c.load_pct for c in s.cpus] == [44, 22, 26, 14] and s.cpus[0].freq_mhz == 1479
    assert (s.gpu_load_pct, s.gpu_freq_mhz, s.emc_load_pct, s.emc_freq_mhz) == (86, 921, 7, 1600)
    assert s.temps_c == {"PLL": 39, "CPU": 44, "GPU": 42.5, "AO": 47.5, "thermal": 42.5}  # PMIC@100C is a dummy
    assert [(r.name, r.current_mw, r.average_mw) for r in s.rails] == [
        ("POM_5V_IN", 4531, 3285), ("POM_5V_GPU", 1113, 213), ("POM_5V_CPU", 539, 722)
    ]
    assert s.total_power_mw == 4531 and s.power_source == "POM_5V_IN"
    summary = summarize(samples)
    assert summary.power_mw == pytest.approx((4122 + 4531 + 4523 + 4531) / 4)
    assert summary.gpu_load_pct == pytest.approx((28 + 86 + 99 + 99) / 4) and summary.max_temp_c == 48


def test_tegrastats_tx2_rails_and_input_total():
    (s,) = parse_tegrastats(board_log("tegrastats-tx2.txt"))
    assert len(s.cpus) == 6 and s.cpu_load_pct == pytest.approx((9 + 21 + 25 + 3 + 1 + 1) / 6)
    assert (s.gpu_load_pct, s.gpu_freq_mhz, s.emc_freq_mhz) == (0, None, None)
    assert {r.name for r in s.rails} == {"VDD_SYS_GPU", "VDD_SYS_SOC", "VDD_4V0_WIFI", "VDD_IN", "VDD_SYS_CPU", "VDD_SYS_DDR"}
    assert s.total_power_mw == 3140 and s.temps_c["Tdiode"] == 41.25


def test_tegrastats_tx2_cores_off_and_no_rails():
    samples = parse_tegrastats(board_log("tegrastats-tx2-jp46-cores-off.txt"))
    assert len(samples) == 6
    s = samples[0]
    assert [c.online for c in s.cpus] == [True, False, False, True, True, True] and s.cpus_online == 4
    assert s.cpu_load_pct == pytest.approx((3 + 0 + 1 + 1) / 4)
    assert (s.swap_used_mb, s.swap_total_mb) == (0, 1913) and s.rails == () and s.total_power_mw is None


def test_tegrastats_xavier_rails_named_like_temperatures():
    (s,) = parse_tegrastats(board_log("tegrastats-xavier-agx.txt"))  # the prompt line is skipped
    assert len(s.cpus) == 8 and s.temps_c["GPU"] == 30.5 and s.temps_c["CPU"] == 31.5
    assert [r.name for r in s.rails] == ["GPU", "CPU", "SOC", "CV", "VDDRQ", "SYS5V"]
    assert s.total_power_mw == 463 + 618 + 2936 + 0 + 309 + 3306 and s.power_source == "sum of rails"


def test_tegrastats_orin_timestamp_mw_units_and_absent_sensors():
    (s,) = parse_tegrastats(board_log("tegrastats-xavier-or-orin.txt"))
    assert s.timestamp == "04-11-2025 10:36:27" and len(s.cpus) == 12
    assert (s.gpu_load_pct, s.gpu_freq_mhz) == (0, None)  # GR3D_FREQ 0%@[0,0]
    assert "CV0" not in s.temps_c and "GPU" not in s.temps_c and s.temps_c["tj"] == 44.343
    assert [r.name for r in s.rails] == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "NC", "VDDQ_VDD2_1V8AO", "NC"]
    assert s.total_power_mw == 2340 + 390 + 4025 + 301


@pytest.mark.parametrize("text", ["", "no stats here", "RAM 1/2MB CPU [x%@1]"])
def test_tegrastats_garbage(text):
    with pytest.raises(ToolOutputError, match="tegrastats"):
        parse_tegrastats(text)


def test_nvpmodel_query_and_the_no_sudo_errors():
    mode = parse_nvpmodel(board_log("nvpmodel-q.txt"))
    assert (mode.name, mode.mode_id, mode.errors) == ("5W", 1, ())
    nosudo = parse_nvpmodel(board_log("nvpmodel-q-nosudo-error.txt"))
    assert (nosudo.name, nosudo.mode_id) == ("5W", 1)
    assert len(nosudo.errors) == 2 and nosudo.errors[0].startswith("NVPM ERROR: Error opening /sys/kernel/nvpmodel_emc_cap")
    thor = parse_nvpmodel(board_log("nvpmodel-q-thor.txt"))
    assert (thor.name, thor.mode_id) == ("MAXN", 0)
    with pytest.raises(ToolOutputError, match="run it with sudo"):
        parse_nvpmodel("NVPM ERROR: Error opening /sys/kernel/nvpmodel_emc_cap/emc_iso_cap: 13\n")
    with pytest.raises(ToolOutputError, match="NV Power Mode"):
        parse_nvpmodel("command not found\n")


def test_jetson_clocks_show_head():
    state = parse_jetson_clocks(board_log("jetson_clocks-show-nano-head.txt"))
    assert (state.soc_family, state.machine) == ("tegra210", "NVIDIA Jetson Nano Developer Kit")
    assert state.online_cpus == (0, 1, 2, 3) and state.cluster_switching == "Disabled"
    assert state.clocks_pinned is None  # the captured head has no clock lines


def test_jetson_clocks_domains_from_key_value_lines():
    # constructed from the documented key=value layout (no complete public sample exists, see board-logs README)
    text = (
        "SOC family:tegra210  Machine:NVIDIA Jetson Nano Developer Kit\nOnline CPUs: 0-1,3\n"
        "cpu0: Online=1 Governor=schedutil MinFreq=1479000 MaxFreq=1479000 CurrentFreq=1479000\n"
        "GPU MinFreq=921600000 MaxFreq=921600000 CurrentFreq=921600000\n"
        "EMC MinFreq=204000000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=1\nNV Power Mode: MAXN\n"
    )
    state = parse_jetson_clocks(text)
    assert state.online_cpus == (0, 1, 3) and state.gpu.max_hz == 921600000 and state.power_mode == "MAXN"
    assert state.clocks_pinned is True
    slow = parse_jetson_clocks(text.replace("CurrentFreq=921600000", "CurrentFreq=76800000"))
    assert slow.clocks_pinned is False
    with pytest.raises(ToolOutputError, match="jetson_clocks"):
        parse_jetson_clocks("cpu0: Online=1\n")
