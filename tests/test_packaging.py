"""A built wheel, installed outside the checkout, carries what a user needs: suites, C sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_lists_the_shipped_suites(tmp_path: Path) -> None:
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
             "-w", str(wheels), str(ROOT)]  # fmt: skip
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("elmbench-*.whl")
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
               str(wheel)]  # fmt: skip
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = "import elmbench, sys; print(elmbench.__file__)"
    where = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert where.startswith(str(target))  # the wheel's copy, not the checkout's
    listed = subprocess.run(
        [sys.executable, "-m", "elmbench", "suites", "--format", "json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    names = {row["name"] for row in json.loads(listed)}
    assert {"smoke", "ci", "zero_shot", "openllm", "llm360", "norms", "gpu"} <= names
    package = target / "elmbench"
    assert (package / "engine" / "cpu_kernels.c").is_file()
    assert (package / "engine" / "cpu_ops.cpp").is_file()
    assert (package / "engine" / "README.md").is_file()
