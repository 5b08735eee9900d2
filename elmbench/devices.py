"""Device profiles (peak bandwidth and FLOP/s from vendor specs), detection, and name resolution.

`resolve_device("auto" | "cpu" | "cuda[:N]" | "mps" | "mlx-gpu" | "mlx-cpu" | <profile>, backend)`
picks a present device and the profile whose figures the rooflines use.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, NoReturn

from elmbench.errors import ConfigError, UnavailableError, UnknownNameError

KINDS = ("cuda", "apple", "cpu")
BACKENDS = ("torch", "mlx")
TERA = 1e12


@dataclass(frozen=True)
class DeviceProfile:
    """One device's published peak figures; None where the vendor publishes none."""

    name: str
    vendor: str
    kind: str  # 'cuda' | 'apple' | 'cpu'
    label: str  # the product name, as a table shows it
    backends: tuple[str, ...]  # allowed backends, the default first
    memory_gib: float | None  # GPU memory; Apple: the largest unified-memory configuration
    bandwidth_gb_per_s: float | None  # peak memory bandwidth, 1e9 bytes/s
    peak_bf16_flop_per_s: float | None  # dense tensor-core peak, never the sparse figure
    peak_fp16_flop_per_s: float | None
    source: str
    notes: str = ""
    measured: bool = False  # bandwidth is measured at run time (elmbench.measure.membw)
    match: str = ""  # regex full-matched (case-insensitive) against the detected hardware name

    def peak_flop_per_s(self, dtype: str) -> float | None:
        """The dense peak for a dtype name ('bfloat16', 'float16'); None when unknown."""
        return {
            "bfloat16": self.peak_bf16_flop_per_s,
            "bf16": self.peak_bf16_flop_per_s,
            "float16": self.peak_fp16_flop_per_s,
            "fp16": self.peak_fp16_flop_per_s,
        }.get(dtype)

    def matches(self, hardware: str) -> bool:
        """Whether a detected hardware name is this profile's device."""
        return bool(self.match) and re.fullmatch(self.match, hardware.strip(), re.I) is not None

    def with_measured_bandwidth(self, gb_per_s: float, method: str) -> DeviceProfile:
        """A copy whose bandwidth is a run-time measurement (the CPU roofline)."""
        return replace(
            self, bandwidth_gb_per_s=gb_per_s, measured=True, source=f"measured: {method}"
        )

    def to_record(self) -> dict[str, Any]:
        """JSON-safe form for run.json and `elmbench devices`."""
        row = asdict(self)
        row["backends"] = list(self.backends)
        row.pop("match")
        return row


def _nvidia(
    name: str,
    label: str,
    memory_gib: float,
    gb_per_s: float,
    dense_tflop_per_s: float,
    source: str,
    notes: str,
    match: str,
) -> DeviceProfile:
    flop = dense_tflop_per_s * TERA
    return DeviceProfile(
        name, "NVIDIA", "cuda", label, ("torch",), memory_gib, gb_per_s, flop, flop, source, notes,
        match=match,
    )  # fmt: skip


_APPLE_FLOPS = "Apple publishes no GPU FP16/BF16 peak, so FLOP/s (and MFU) are left unknown."


def _apple(
    name: str, chip: str, memory_gib: float, gb_per_s: float, source: str, notes: str = ""
) -> DeviceProfile:
    return DeviceProfile(
        name, "Apple", "apple", f"Apple {chip}", ("mlx", "torch"), memory_gib, gb_per_s,
        None, None, source, " ".join(n for n in (notes, _APPLE_FLOPS) if n),
        match=re.escape(f"Apple {chip}"),
    )  # fmt: skip


_ADA = "NVIDIA Ada Lovelace GPU Architecture whitepaper, GeForce RTX 4090 specifications"
_A100 = "NVIDIA A100 Tensor Core GPU datasheet"
_H100 = "NVIDIA H100 Tensor Core GPU datasheet; NVIDIA H100 Tensor Core GPU Architecture whitepaper"
_M1 = "Apple Newsroom: 'Introducing M1 Pro and M1 Max' (Oct 2021)"
_M2 = "Apple Newsroom: 'Apple unveils M2 Pro and M2 Max' (Jan 2023)"
_M3 = "Apple Newsroom: 'Apple unveils M3, M3 Pro, and M3 Max' (Oct 2023); MacBook Pro tech specs"
_M4 = "Apple Newsroom: M4 Pro and M4 Max (Oct 2024); MacBook Pro (2024) tech specs"
_SPARSE = "Dense tensor-core figure (the datasheet's 'with sparsity' figure is twice this)."

# fmt: off
PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            "cpu", "host", "cpu", "host CPU", ("torch", "mlx"), None, None, None, None,
            "measured at run time", "Bandwidth: elmbench.measure.membw read probe; memory and "
            "model from detection; no peak FLOP/s is assumed.", measured=True,
        ),
        DeviceProfile(
            "mlx-cpu", "host", "cpu", "host CPU (MLX)", ("mlx",), None, None, None, None,
            "measured at run time", "MLX on the CPU (mlx[cpu] on Linux). Bandwidth: "
            "elmbench.measure.membw read probe; no peak FLOP/s is assumed.", measured=True,
        ),
        _nvidia(
            "rtx4090", "NVIDIA GeForce RTX 4090", 24, 1008, 165.2, _ADA,
            "Dense FP16/BF16 tensor peak with FP32 accumulate (what PyTorch matmuls use); GeForce "
            "runs FP16 with FP16 accumulate at 330.3 TFLOP/s; sparse figures are twice these.",
            r"NVIDIA GeForce RTX 4090",
        ),
        _nvidia(
            "a100", "NVIDIA A100 SXM4 80GB", 80, 2039, 312, _A100,
            _SPARSE + " The A100 80GB PCIe has 1,935 GB/s.", r"NVIDIA A100[- ]SXM4[- ]80GB",
        ),
        _nvidia(
            "a100-40gb", "NVIDIA A100 SXM4 40GB", 40, 1555, 312, _A100, _SPARSE,
            r"NVIDIA A100[- ]SXM4[- ]40GB",
        ),
        _nvidia(
            "h100", "NVIDIA H100 SXM5 80GB", 80, 3350, 989.4, _H100,
            _SPARSE + " 989.4 TFLOP/s is the whitepaper's dense SXM5 figure (datasheet: 1,979 "
            "with sparsity).", r"NVIDIA H100 80GB HBM3|NVIDIA H100 SXM.*",
        ),
        _nvidia(
            "h100-pcie", "NVIDIA H100 PCIe 80GB", 80, 2000, 756, _H100,
            _SPARSE + " Datasheet: 1,513 TFLOP/s with sparsity, 2 TB/s.", r"NVIDIA H100 PCIe.*",
        ),
        _nvidia(
            "h200", "NVIDIA H200 SXM 141GB", 141, 4800, 989.4, "NVIDIA H200 Tensor Core GPU "
            "datasheet", _SPARSE + " Datasheet: 1,979 TFLOP/s with sparsity (the H100 SXM5 "
            "compute); 141 GB HBM3e at 4.8 TB/s.", r"NVIDIA H200(?! NVL).*",
        ),
        _nvidia(
            "l4", "NVIDIA L4", 24, 300, 121, "NVIDIA L4 Tensor Core GPU datasheet",
            _SPARSE + " Datasheet: 242 TFLOP/s with sparsity.", r"NVIDIA L4",
        ),
        _apple(
            "m1", "M1", 16, 68.25, "derived from the memory interface (LPDDR4X-4266, 128-bit)",
            "Apple gives no GB/s for M1 (it calls M1 Pro's 200 GB/s 'nearly 3x' M1).",
        ),
        _apple("m1pro", "M1 Pro", 32, 200, _M1),
        _apple("m1max", "M1 Max", 64, 400, _M1),
        _apple("m1ultra", "M1 Ultra", 128, 800, "Apple Newsroom: 'Apple unveils M1 Ultra' (2022)"),
        _apple("m2", "M2", 24, 100, "Apple Newsroom: 'Apple unveils M2' (Jun 2022)"),
        _apple("m2pro", "M2 Pro", 32, 200, _M2),
        _apple("m2max", "M2 Max", 96, 400, _M2),
        _apple("m2ultra", "M2 Ultra", 192, 800, "Apple Newsroom: 'Apple introduces M2 Ultra'"),
        _apple("m3", "M3", 24, 100, _M3),
        _apple("m3pro", "M3 Pro", 36, 150, _M3),
        _apple("m3max", "M3 Max", 128, 400, _M3, "Full chip (40-core GPU); the 30-core GPU "
               "M3 Max has 300 GB/s and reports the same name."),
        _apple("m3ultra", "M3 Ultra", 512, 819, "Apple Mac Studio (2025) tech specs"),
        _apple("m4", "M4", 32, 120, _M4),
        _apple("m4pro", "M4 Pro", 64, 273, _M4),
        _apple("m4max", "M4 Max", 128, 546, _M4, "Full chip (40-core GPU); the 32-core GPU "
               "M4 Max has 410 GB/s and reports the same name."),
    )
}
# fmt: on

# Names that select a present device rather than a profile (the profile is then matched).
SELECTORS = ("auto", "cuda", "mps", "mlx-gpu")


@dataclass(frozen=True)
class DetectedDevice:
    """One device present here, as one backend sees it."""

    key: str  # 'cpu' | 'mlx-cpu' | 'cuda:N' | 'mps' | 'mlx-gpu': what --device accepts
    kind: str  # 'cpu' | 'cuda' | 'apple'
    backend: str  # the backend that runs on it
    framework_device: (
        str  # the backend's own name: torch 'cpu' | 'cuda:N' | 'mps'; mlx 'cpu' | 'gpu'
    )
    hardware: str  # CPU model, 'NVIDIA H100 80GB HBM3', 'Apple M2 Max'
    memory_gib: float | None = None

    def to_record(self) -> dict[str, Any]:
        """JSON-safe form for records."""
        return asdict(self)


Detector = Callable[[], Sequence[DetectedDevice]]


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, macOS sysctl), or the machine type."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        brand = _sysctl("machdep.cpu.brand_string")
        if brand:
            return brand
    return platform.processor() or platform.machine() or "unknown"


def _sysctl(key: str) -> str | None:
    try:
        out = subprocess.run(
            ["sysctl", "-n", key], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _host_memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def detect() -> list[DetectedDevice]:
    """What is present: always the CPU; CUDA GPUs and MPS via torch; MLX's CPU and Metal GPU."""
    cpu_name = cpu_model()
    host_gib = _host_memory_gib()
    found = [DetectedDevice("cpu", "cpu", "torch", "cpu", cpu_name, host_gib)]
    apple = platform.system() == "Darwin" and platform.machine() == "arm64"
    chip = cpu_name if apple else ""
    try:
        import mlx.core as mx

        found.append(DetectedDevice("mlx-cpu", "cpu", "mlx", "cpu", cpu_name, host_gib))
        if mx.metal.is_available():
            found.append(DetectedDevice("mlx-gpu", "apple", "mlx", "gpu", chip, host_gib))
    except Exception:  # not installed, or installed but unable to create a device
        pass
    try:
        import torch

        for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            props = torch.cuda.get_device_properties(i)
            gib = props.total_memory / 2**30
            found.append(DetectedDevice(f"cuda:{i}", "cuda", "torch", f"cuda:{i}", props.name, gib))
        if apple and torch.backends.mps.is_available():
            found.append(DetectedDevice("mps", "apple", "torch", "mps", chip, host_gib))
    except Exception:  # torch missing, or a broken driver raising from inside torch
        pass
    return found


def get_profile(name: str) -> DeviceProfile:
    """A profile by name; unknown names get did-you-mean."""
    key = name.strip().lower()
    if key not in PROFILES:
        raise UnknownNameError("device", name, [*PROFILES, *SELECTORS])
    return PROFILES[key]


def match_profile(device: DetectedDevice) -> DeviceProfile:
    """The profile of a detected device, or a figure-less generic one for unknown hardware."""
    if device.kind == "cpu":
        base = PROFILES["mlx-cpu" if device.backend == "mlx" else "cpu"]
        return replace(base, memory_gib=device.memory_gib)
    for profile in PROFILES.values():
        if profile.kind == device.kind and profile.matches(device.hardware):
            return profile
    vendor = "NVIDIA" if device.kind == "cuda" else "Apple"
    return DeviceProfile(
        "cuda" if device.kind == "cuda" else "apple", vendor, device.kind,
        device.hardware or f"unknown {vendor} device",
        ("torch",) if device.kind == "cuda" else ("mlx", "torch"), device.memory_gib,
        None, None, None, "detected",
        f"No profile for '{device.hardware}': peak figures unknown, roofline shares are left out.",
    )  # fmt: skip


@dataclass(frozen=True)
class ResolvedDevice:
    """A present device with the backend to run and the profile whose figures apply."""

    requested: str
    backend: str
    profile: DeviceProfile
    detected: DetectedDevice
    mismatch: str | None = None  # the named profile is not the detected hardware

    @property
    def framework_device(self) -> str:
        """The device name the backend takes (ModelSpec.device)."""
        return self.detected.framework_device

    def with_measured_bandwidth(self, gb_per_s: float, method: str) -> ResolvedDevice:
        """A copy whose profile bandwidth is a run-time measurement."""
        return replace(self, profile=self.profile.with_measured_bandwidth(gb_per_s, method))

    def to_record(self) -> dict[str, Any]:
        """JSON-safe form for run.json: request, backend, profile, detected device, mismatch."""
        return {
            "requested": self.requested,
            "backend": self.backend,
            "framework_device": self.framework_device,
            "profile": self.profile.to_record(),
            "detected": self.detected.to_record(),
            "mismatch": self.mismatch,
        }


# Preference order of detected keys for `auto` and the generic selectors, per backend.
_AUTO: dict[str | None, tuple[str, ...]] = {
    None: ("cuda:0", "mlx-gpu", "mps", "cpu"),
    "torch": ("cuda:0", "mps", "cpu"),
    "mlx": ("mlx-gpu", "mlx-cpu"),
}
_CUDA_KEY = re.compile(r"cuda(?::(\d+))?")


def resolve_device(
    name: str,
    backend: str | None = None,
    detected: Sequence[DetectedDevice] | Detector | None = None,
) -> ResolvedDevice:
    """Resolve --device NAME and --backend against the present devices (default: `detect()`)."""
    if backend is not None and backend not in BACKENDS:
        raise UnknownNameError("backend", backend, BACKENDS)
    present = list(detected() if callable(detected) else detect() if detected is None else detected)
    by_key = {d.key: d for d in present}
    requested = name.strip().lower()
    cuda = _CUDA_KEY.fullmatch(requested)

    if requested == "auto":
        device = next((by_key[k] for k in _AUTO[backend] if k in by_key), None)
        if device is None:  # only reachable for backend='mlx'
            raise UnavailableError("backend 'mlx'", "MLX is not installed", _MLX_HINT)
        return ResolvedDevice(name, device.backend, match_profile(device), device)
    if cuda or requested in ("mps", "mlx-gpu"):
        key = f"cuda:{cuda.group(1) or 0}" if cuda else requested
        kind, owner = ("cuda", "torch") if cuda else ("apple", _SELECTOR_BACKEND[requested])
        _check_backend(requested, (owner,), backend)
        device = by_key.get(key) or _unavailable(requested, kind, owner, present)
        return ResolvedDevice(name, owner, match_profile(device), device)

    profile = get_profile(requested)
    chosen = backend or profile.backends[0]
    _check_backend(profile.name, profile.backends, chosen)
    if profile.kind == "cpu":
        device = by_key.get("mlx-cpu" if chosen == "mlx" else "cpu") or _unavailable(
            profile.name, "cpu", chosen, present
        )
        return ResolvedDevice(name, chosen, replace(profile, memory_gib=device.memory_gib), device)
    if profile.kind == "cuda":  # the first GPU that is this profile's, else the first GPU
        gpus = [d for d in present if d.kind == "cuda"]
        device = next((d for d in gpus if profile.matches(d.hardware)), None) or (
            gpus[0] if gpus else _unavailable(profile.name, "cuda", chosen, present)
        )
    else:
        key = {"mlx": "mlx-gpu", "torch": "mps"}[chosen]
        device = by_key.get(key) or _unavailable(profile.name, profile.kind, chosen, present)
    mismatch = None
    if not profile.matches(device.hardware):
        mismatch = (
            f"device profile '{profile.name}' ({profile.label}) was requested but "
            f"'{device.hardware}' is present; its figures may not apply"
        )
    return ResolvedDevice(name, chosen, profile, device, mismatch)


_SELECTOR_BACKEND = {"mps": "torch", "mlx-gpu": "mlx"}
_MLX_HINT = "pip install 'mlx[cpu]' on Linux, or pip install mlx on Apple silicon"
_WHAT = {
    ("cuda", "torch"): "a CUDA GPU",
    ("apple", "mlx"): "MLX on Apple silicon",
    ("apple", "torch"): "PyTorch MPS on Apple silicon",
    ("cpu", "mlx"): "MLX on the CPU",
    ("cpu", "torch"): "PyTorch on the CPU",
}


def _check_backend(device: str, allowed: Sequence[str], backend: str | None) -> None:
    if backend is not None and backend not in allowed:
        raise ConfigError(
            f"backend '{backend}' cannot run on device '{device}'; "
            f"allowed backends there: {', '.join(allowed)}"
        )


def _unavailable(
    requested: str, kind: str, backend: str, present: Sequence[DetectedDevice]
) -> NoReturn:
    keys = [d.key for d in present]
    if kind == "cpu" and backend == "mlx":
        reason, hint = f"MLX is not installed (present: {', '.join(keys)})", _MLX_HINT
    else:
        reason = f"only {', '.join(keys)} {'is' if len(keys) == 1 else 'are'} present"
        hint = f"Use {' or '.join(f'--device {k}' for k in keys)}"
    raise UnavailableError(f"{_WHAT[kind, backend]} (--device {requested})", reason, hint)
