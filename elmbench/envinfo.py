"""What this machine is and what elmbench can run on it, gathered as plain data (no printing).

Every probe is guarded: a missing or broken package shows up as a value, never as an exception.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

from elmbench import __version__
from elmbench.norms import NORMS, Availability, NormVariant

NOT_INSTALLED = "not installed"

# Distribution names, as `pip` knows them.
_PACKAGES = ("torch", "mlx", "mlx-lm", "lm-eval", "transformers")


def package_version(dist: str) -> str:
    """The installed version of a distribution, or 'not installed'; never imports it."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return NOT_INSTALLED


def check_variant(variant: NormVariant) -> Availability:
    """`variant.available()`, with any failure of the check itself reported as unavailable."""
    try:
        return variant.available()
    except Exception as exc:  # a broken optional install must not take the whole listing down
        return Availability(False, f"availability check failed: {type(exc).__name__}: {exc}")


def norm_status(backends: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """One row per registered norm variant: backend, name, label, availability, reason, hint."""
    rows = []
    for backend, table in NORMS.items():
        if backends is not None and backend not in backends:
            continue
        for variant in table.values():
            status = check_variant(variant)
            rows.append(
                {
                    "backend": backend,
                    "name": variant.name,
                    "label": variant.label,
                    "changes_numerics": variant.changes_numerics,
                    "available": status.ok,
                    "reason": "" if status.ok else status.reason,
                    "hint": "" if status.ok else status.hint,
                    "summary": variant.summary,
                }
            )
    return rows


def gather() -> dict[str, Any]:
    """Python, platform, package versions, CPU, GPUs, MLX, and what elmbench can run here."""
    cuda = _cuda()
    apple = _apple(platform.system(), platform.machine())
    mlx = _mlx()
    norms = norm_status()
    return {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "platform": platform.platform(),
        },
        "packages": {"elmbench": __version__, **{p: package_version(p) for p in _PACKAGES}}
        | {"apex": _apex_summary()},
        "cpu": _cpu(),
        "cuda": cuda,
        "apple": apple,
        "mlx": mlx,
        "can_run": _can_run(cuda, apple, mlx, norms),
    }


def _apex_summary() -> str:
    """NVIDIA apex: its version when usable, else 'not installed' or why it cannot be used."""
    try:
        from elmbench.norms.torch_norms import apex_available

        status = apex_available()
    except ImportError:
        return f"{NOT_INSTALLED} (needs torch)"
    except Exception as exc:  # a half-built apex can raise anything on import
        return f"unusable: {type(exc).__name__}: {exc}"
    if status.ok:
        return package_version("apex")
    if "not installed" in status.reason:
        return NOT_INSTALLED
    return f"unusable: {status.reason}"


def _cpu() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_total_bytes": _memory_total_bytes(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            )
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def _memory_total_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _cuda() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {"available": False, "reason": f"torch {NOT_INSTALLED}", "devices": []}
    try:
        if not torch.cuda.is_available():
            return {"available": False, "cuda_version": torch.version.cuda, "devices": []}
        devices = []
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append({"index": i, "name": props.name, "memory_bytes": props.total_memory})
        return {"available": True, "cuda_version": torch.version.cuda, "devices": devices}
    except Exception as exc:  # a broken driver raises from inside torch
        return {"available": False, "reason": f"{type(exc).__name__}: {exc}", "devices": []}


def _apple(system: str, machine: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "apple_silicon": system == "Darwin" and machine == "arm64",
        "mps_available": False,
    }
    try:
        import torch

        info["mps_available"] = bool(torch.backends.mps.is_available())
    except ImportError:
        info["mps_available"] = False
    except Exception as exc:  # torch builds without MPS support can raise here
        info["mps_error"] = f"{type(exc).__name__}: {exc}"
    return info


def _mlx() -> dict[str, Any]:
    try:
        import mlx.core as mx
    except ImportError:
        return {"installed": False, "default_device": None, "metal_available": False}
    try:
        return {
            "installed": True,
            "default_device": str(mx.default_device()),
            "metal_available": bool(mx.metal.is_available()),
            "cpu_blas": _mlx_blas(),
        }
    except Exception as exc:  # MLX can import yet fail to create a device
        return {"installed": True, "error": f"{type(exc).__name__}: {exc}"}


def _mlx_blas() -> str:
    """What MLX's CPU products will run on in elmbench's MLX processes (ELMBENCH_MLX_BLAS)."""
    from elmbench.backends import mlx_blas
    from elmbench.errors import ElmbenchError

    try:
        blas = mlx_blas.plan()
    except ElmbenchError as exc:
        return f"error: {exc}"
    if blas.preload is not None:
        return f"{blas.note}, preloaded into MLX processes"
    return mlx_blas.describe() + f" ({blas.note})"


def _can_run(
    cuda: dict[str, Any], apple: dict[str, Any], mlx: dict[str, Any], norms: list[dict[str, Any]]
) -> dict[str, Any]:
    torch_devices = []
    if package_version("torch") != NOT_INSTALLED:
        torch_devices = ["cpu"]
        if cuda.get("available"):
            torch_devices += [f"cuda:{d['index']}" for d in cuda["devices"]]
        if apple.get("mps_available"):
            torch_devices.append("mps")
    mlx_devices = []
    if mlx.get("installed") and "error" not in mlx:
        mlx_devices = ["cpu"] + (["gpu"] if mlx.get("metal_available") else [])
    return {
        "backends": {"torch": torch_devices, "mlx": mlx_devices},
        "norms": {
            backend: [r["label"] for r in norms if r["backend"] == backend and r["available"]]
            for backend in NORMS
        },
        "norms_unavailable": {
            backend: {
                r["name"]: r["reason"]
                for r in norms
                if r["backend"] == backend and not r["available"]
            }
            for backend in NORMS
        },
    }
