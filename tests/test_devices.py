"""Device profiles, detection and --device/--backend resolution, on faked and on real hardware."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest

from elmbench.devices import (
    PROFILES,
    DetectedDevice,
    detect,
    get_profile,
    match_profile,
    resolve_device,
)
from elmbench.errors import ConfigError, UnavailableError, UnknownNameError

CPU = DetectedDevice("cpu", "cpu", "torch", "cpu", "AMD EPYC", 24.0)
MLX_CPU = DetectedDevice("mlx-cpu", "cpu", "mlx", "cpu", "AMD EPYC", 24.0)


def cuda(i: int, name: str, gib: float = 79.1) -> DetectedDevice:
    return DetectedDevice(f"cuda:{i}", "cuda", "torch", f"cuda:{i}", name, gib)


def mac(chip: str = "Apple M2 Max") -> list[DetectedDevice]:
    """An Apple silicon Mac with MLX (Metal) and torch MPS."""
    return [
        DetectedDevice("cpu", "cpu", "torch", "cpu", chip, 96.0),
        DetectedDevice("mlx-cpu", "cpu", "mlx", "cpu", chip, 96.0),
        DetectedDevice("mlx-gpu", "apple", "mlx", "gpu", chip, 96.0),
        DetectedDevice("mps", "apple", "torch", "mps", chip, 96.0),
    ]


H100_BOX = [CPU, cuda(0, "NVIDIA H100 80GB HBM3")]
LINUX = [CPU, MLX_CPU]


def test_profiles_are_consistent_per_kind() -> None:
    allowed = {"cuda": ("torch",), "apple": ("mlx", "torch")}
    for name, p in PROFILES.items():
        assert p.name == name == name.lower()
        assert p.source and p.label
        if p.kind in allowed:
            assert p.backends == allowed[p.kind], name
            assert p.bandwidth_gb_per_s and p.memory_gib and not p.measured, name
            assert p.match and re.compile(p.match).pattern
        else:
            assert p.kind == "cpu" and p.measured and p.bandwidth_gb_per_s is None
            assert p.peak_bf16_flop_per_s is None and p.peak_fp16_flop_per_s is None
        if p.kind == "cuda":
            assert p.peak_bf16_flop_per_s and p.peak_fp16_flop_per_s, name
        if p.kind == "apple":  # Apple publishes no FP16/BF16 GPU peak: never filled in
            assert p.peak_bf16_flop_per_s is None and "no GPU FP16/BF16" in p.notes
    assert PROFILES["cpu"].backends == ("torch", "mlx")
    assert PROFILES["mlx-cpu"].backends == ("mlx",)


@pytest.mark.parametrize(
    ("name", "gb_per_s", "dense_tflop_per_s"),
    [
        ("rtx4090", 1008, 165.2),
        ("a100", 2039, 312),
        ("h100", 3350, 989.4),
        ("h200", 4800, 989.4),
        ("l4", 300, 121),
        ("m2max", 400, None),
        ("m4max", 546, None),
    ],
)
def test_vendor_figures(name: str, gb_per_s: float, dense_tflop_per_s: float | None) -> None:
    p = get_profile(name)
    assert p.bandwidth_gb_per_s == gb_per_s
    expected = None if dense_tflop_per_s is None else pytest.approx(dense_tflop_per_s * 1e12)
    assert p.peak_flop_per_s("bfloat16") == expected
    assert p.peak_flop_per_s("float16") == expected
    assert p.peak_flop_per_s("float32") is None


def test_rtx4090_notes_say_which_fp16_figure() -> None:
    assert "FP32 accumulate" in PROFILES["rtx4090"].notes
    assert "330.3" in PROFILES["rtx4090"].notes


@pytest.mark.parametrize(
    ("hardware", "profile"),
    [
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H100 NVL", "cuda"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("NVIDIA A100 80GB PCIe", "cuda"),
        ("NVIDIA GeForce RTX 4090", "rtx4090"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA L40S", "cuda"),
        ("NVIDIA GeForce RTX 3060", "cuda"),
    ],
)
def test_cuda_hardware_names_match_profiles(hardware: str, profile: str) -> None:
    matched = match_profile(cuda(0, hardware))
    assert matched.name == profile
    if profile == "cuda":  # unknown hardware: a generic profile that assumes no figures
        assert matched.bandwidth_gb_per_s is None and matched.peak_bf16_flop_per_s is None
        assert hardware in matched.notes and matched.memory_gib == 79.1


@pytest.mark.parametrize(
    ("chip", "profile"),
    [
        ("Apple M1", "m1"),
        ("Apple M2", "m2"),
        ("Apple M2 Max", "m2max"),
        ("Apple M3 Ultra", "m3ultra"),
        ("Apple M4 Pro", "m4pro"),
        ("Apple M9 Max", "apple"),
    ],
)
def test_apple_chip_names_match_profiles(chip: str, profile: str) -> None:
    assert match_profile(mac(chip)[2]).name == profile


def test_auto_on_a_cuda_machine_picks_the_gpu_and_its_profile() -> None:
    r = resolve_device("auto", detected=H100_BOX)
    assert (r.profile.name, r.backend, r.framework_device, r.mismatch) == (
        "h100", "torch", "cuda:0", None,
    )  # fmt: skip
    assert resolve_device("cuda", detected=H100_BOX).profile.name == "h100"
    assert resolve_device("h100", detected=H100_BOX).mismatch is None


def test_named_profile_on_other_hardware_resolves_with_a_mismatch() -> None:
    r = resolve_device("h100", detected=[CPU, cuda(0, "NVIDIA A100-SXM4-80GB")])
    assert r.profile.name == "h100"
    assert r.detected.hardware == "NVIDIA A100-SXM4-80GB"
    assert r.mismatch is not None and "h100" in r.mismatch and "A100-SXM4-80GB" in r.mismatch
    record = json.loads(json.dumps(r.to_record()))
    assert record["profile"]["name"] == "h100"
    assert record["detected"]["hardware"] == "NVIDIA A100-SXM4-80GB"
    assert record["mismatch"] == r.mismatch


def test_named_profile_picks_its_own_gpu_among_several() -> None:
    box = [CPU, cuda(0, "NVIDIA A100-SXM4-80GB"), cuda(1, "NVIDIA H100 80GB HBM3")]
    r = resolve_device("h100", detected=box)
    assert (r.framework_device, r.mismatch) == ("cuda:1", None)
    assert resolve_device("cuda:1", detected=box).profile.name == "h100"
    with pytest.raises(UnavailableError, match="only cpu, cuda:0, cuda:1 are present"):
        resolve_device("cuda:2", detected=box)


@pytest.mark.parametrize("name", ["cuda", "h100", "auto"])
def test_mlx_on_a_cuda_device_is_refused(name: str) -> None:
    if name == "auto":  # auto with mlx falls back to what MLX can run on; none here
        with pytest.raises(UnavailableError, match="MLX is not installed"):
            resolve_device(name, "mlx", detected=H100_BOX)
        return
    with pytest.raises(ConfigError, match=r"backend 'mlx' cannot run on device.*allowed.*torch"):
        resolve_device(name, "mlx", detected=H100_BOX)


def test_apple_machine_backends() -> None:
    here = mac()
    auto = resolve_device("auto", detected=here)
    assert (auto.profile.name, auto.backend, auto.framework_device) == ("m2max", "mlx", "gpu")
    torch_auto = resolve_device("auto", "torch", detected=here)
    assert (torch_auto.backend, torch_auto.framework_device) == ("torch", "mps")
    assert resolve_device("m2max", detected=here).backend == "mlx"  # the profile's default
    assert resolve_device("m2max", "torch", detected=here).framework_device == "mps"
    assert resolve_device("mps", detected=here).profile.name == "m2max"
    assert resolve_device("mlx-gpu", detected=here).backend == "mlx"
    mismatch = resolve_device("m3max", detected=here)
    assert mismatch.profile.name == "m3max" and "Apple M2 Max" in (mismatch.mismatch or "")
    with pytest.raises(ConfigError, match="backend 'mlx' cannot run on device 'mps'"):
        resolve_device("mps", "mlx", detected=here)


def test_apple_profile_on_linux_says_what_is_present() -> None:
    with pytest.raises(UnavailableError) as err:
        resolve_device("m2max", detected=LINUX)
    assert str(err.value) == (
        "MLX on Apple silicon (--device m2max) is not available here: only cpu, mlx-cpu are "
        "present. Use --device cpu or --device mlx-cpu"
    )


def test_cpu_names_and_backends() -> None:
    r = resolve_device("cpu", detected=LINUX)
    assert (r.backend, r.framework_device, r.profile.memory_gib) == ("torch", "cpu", 24.0)
    m = resolve_device("cpu", "mlx", detected=LINUX)
    assert (m.backend, m.detected.key) == ("mlx", "mlx-cpu")
    assert resolve_device("mlx-cpu", detected=LINUX).backend == "mlx"
    assert resolve_device("auto", "mlx", detected=LINUX).detected.key == "mlx-cpu"
    with pytest.raises(ConfigError, match="allowed backends there: mlx"):
        resolve_device("mlx-cpu", "torch", detected=LINUX)
    with pytest.raises(UnavailableError, match="pip install 'mlx\\[cpu\\]'"):
        resolve_device("mlx-cpu", detected=[CPU])


def test_unknown_names_get_did_you_mean() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'm2max'"):
        resolve_device("m2-max", detected=LINUX)
    with pytest.raises(UnknownNameError, match="unknown backend 'jax'"):
        resolve_device("cpu", "jax", detected=LINUX)


def test_detector_function_is_called() -> None:
    calls = []

    def detector() -> list[DetectedDevice]:
        calls.append(1)
        return H100_BOX

    assert resolve_device("auto", detected=detector).profile.name == "h100"
    assert calls == [1]


def test_measured_bandwidth_replaces_the_unknown_one() -> None:
    r = resolve_device("cpu", detected=LINUX).with_measured_bandwidth(23.5, "torch.sum")
    assert r.profile.bandwidth_gb_per_s == 23.5 and r.profile.measured
    assert r.profile.source == "measured: torch.sum"
    assert PROFILES["cpu"].bandwidth_gb_per_s is None  # the registry is untouched


def test_real_detection_here_has_a_cpu_and_no_gpu() -> None:
    found = detect()
    keys = [d.key for d in found]
    assert keys[0] == "cpu" and found[0].hardware
    assert not any(k.startswith("cuda") for k in keys)  # the test machine is CPU-only
    assert ("mlx-cpu" in keys) == (importlib.util.find_spec("mlx") is not None)
    assert resolve_device("auto").profile.name == "cpu"
    with pytest.raises(UnavailableError, match=f"only {', '.join(keys)} are present"):
        resolve_device("h100")
