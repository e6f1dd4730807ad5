import json
import re

import pytest

from relation_networks import config as config_lib
from relation_networks import precision
from relation_networks.config import ConfigError
from conftest import run_tool, tiny_sort_of_clevr_overrides


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "fma", "amx_bf16", "amx_tile"}, "mixed_bfloat16"),  # Intel Sapphire Rapids and later
    ({"avx2", "fma", "avx512f", "avx512bw"}, "float32"),  # AVX-512 without its bfloat16 instructions
    ({"avx2", "fma"}, "float32"),
    (set(), "float32"),  # no /proc/cpuinfo (macOS, Windows)
])
def test_auto_follows_the_cpu_flags(flags, expected):
    # A speed-up that would pick bfloat16 if it were asked for: these flags decide without measuring.
    assert precision.resolve("auto", flags=flags, speedup=3.0) == expected
    assert precision.resolve("auto", flags=flags, speedup=0.5) == expected


@pytest.mark.parametrize("speedup, expected", [
    (2.0, "mixed_bfloat16"),  # seen on an AMD EPYC with AVX512-BF16
    (0.6, "float32"),  # seen on an Intel Xeon with AVX512-BF16 and no AMX exposed
    (1.1, "float32"),  # not enough to pay for the casts
])
def test_auto_with_avx512_bf16_alone_follows_the_measured_speed(speedup, expected):
    assert precision.resolve("auto", flags={"avx2", "avx512f", "avx512_bf16"}, speedup=speedup) == expected


def test_the_bfloat16_measurement_is_a_positive_ratio_taken_once():
    first = precision.bfloat16_speedup(rows=256, width=64, calls=2, repeats=2)
    assert first > 0
    assert precision.bfloat16_speedup() == first  # cached for the process: every resolve() in it agrees


@pytest.mark.parametrize("explicit", ["float32", "mixed_bfloat16"])
def test_explicit_precision_is_kept_whatever_the_hardware(explicit):
    assert precision.resolve(explicit, flags={"amx_bf16"}) == explicit
    assert precision.resolve(explicit, flags=set()) == explicit


def test_cpu_flags_reads_the_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu sse2 avx2 avx512_bf16\n")
    assert precision.cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx2", "avx512_bf16"}
    assert precision.cpu_flags(str(tmp_path / "missing")) == set()


def test_config_accepts_auto_and_rejects_unknown_precision(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("task: sort_of_clevr\ntrain: {precision: auto}\n")
    assert config_lib.load(str(path)).train.precision == "auto"
    with pytest.raises(ConfigError, match="precision.*one of.*auto"):
        config_lib.load(str(path), ["train.precision=bfloat16"])


def test_training_with_auto_uses_this_machines_precision(tmp_path):
    overrides = tiny_sort_of_clevr_overrides(tmp_path / "data", tmp_path / "run")
    overrides = [o for o in overrides if not o.startswith("train.precision")] + [
        "train.precision=auto", "train.max_steps=2", "train.eval_splits=[val]"]
    result = run_tool("train", "--config", "configs/sort_of_clevr.yaml", *[a for o in overrides for a in ("--set", o)])
    assert result.returncode == 0, result.stderr[-2000:]
    resolved = re.search(r"precision auto -> (\w+)", result.stdout + result.stderr).group(1)
    hardware = json.loads((tmp_path / "run" / "metrics.json").read_text())["hardware"]
    flags = set(hardware["bfloat16_cpu_flags"])
    if "amx_bf16" in flags:
        assert resolved == "mixed_bfloat16"
    elif flags:  # measured in the training process, and the measurement is recorded beside the result
        assert resolved == ("mixed_bfloat16" if hardware["bfloat16_speedup"] >= precision.MIN_BFLOAT16_SPEEDUP
                            else "float32")
    else:
        import tensorflow as tf

        # no bfloat16 in this CPU: float32, unless a GPU (which computes in bfloat16 from Ampere on) is present
        assert resolved == "float32" or tf.config.list_physical_devices("GPU")


def test_results_name_the_bfloat16_hardware_and_the_measured_speed():
    from relation_networks.machine import bfloat16_text

    assert bfloat16_text({"bfloat16_native": False, "bfloat16_cpu_flags": []}) == "bfloat16 in hardware: no"
    assert bfloat16_text({"bfloat16_native": True, "bfloat16_cpu_flags": ["amx_bf16"]}) == (
        "bfloat16 in hardware: yes (amx_bf16)")
    measured = {"bfloat16_native": True, "bfloat16_cpu_flags": ["avx512_bf16"], "bfloat16_speedup": 0.6149}
    assert bfloat16_text(measured) == "bfloat16 in hardware: yes (avx512_bf16; matmuls 0.61x as fast as float32)"
    assert bfloat16_text({"cpu": "written before train.precision=auto"}) is None
