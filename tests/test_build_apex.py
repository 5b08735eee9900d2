"""scripts/build_apex.sh: valid bash; each missing piece (archive, apex tree, CUDA torch) stops it
with one clear line before anything is built. The CUDA build itself runs on a GPU machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from elmbench.norms.torch_norms import APEX_HINT

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "build_apex.sh"
ARCHIVE = ROOT.parent / "shared" / "third_party" / "apex-6424da3b.tar.gz"  # the default

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env={**os.environ, "PYTHON": sys.executable, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("build_apex.sh: ")
    return lines[0]


def test_the_script_parses_and_the_hint_names_it() -> None:
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    assert "scripts/build_apex.sh" in APEX_HINT


def test_a_missing_archive_is_one_line(tmp_path: Path) -> None:
    line = _one_line(_run(str(tmp_path / "nowhere.tar.gz")))
    assert "no apex source archive at" in line and "nowhere.tar.gz" in line


def test_an_archive_that_is_not_apex_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "other" / "csrc").mkdir(parents=True)
    with tarfile.open(tmp_path / "other.tar.gz", "w:gz") as archive:
        archive.add(tmp_path / "other", arcname="other")
    line = _one_line(_run(str(tmp_path / "other.tar.gz")))
    assert "is not an apex source tree" in line
    (tmp_path / "junk.tar.gz").write_text("not gzip")
    assert "is not a .tar.gz archive" in _one_line(_run(str(tmp_path / "junk.tar.gz")))


def test_without_cuda_torch_it_stops_before_building(tmp_path: Path) -> None:
    if torch.version.cuda is not None:
        pytest.skip("this torch is a CUDA build: the script would build apex")
    if not ARCHIVE.exists():
        pytest.skip(f"the vendored apex source is not at {ARCHIVE}")
    build = tmp_path / "build"
    line = _one_line(_run(BUILD_DIR=str(build)))  # the default archive
    assert f"torch {torch.__version__} is built without CUDA" in line
    # It found the apex tree in the archive, and left apex's own setup.py alone.
    (tree,) = build.iterdir()
    assert (tree / "csrc" / "layer_norm_cuda_kernel.cu").is_file()
    assert "fused_layer_norm_cuda" in (tree / "setup.py").read_text()
    assert "APEX_CPP_EXT" in (tree / "setup.py").read_text()  # the original, not ours
