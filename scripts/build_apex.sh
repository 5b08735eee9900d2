#!/usr/bin/env bash
# Build NVIDIA apex's FusedRMSNorm into the current Python environment from an apex source archive:
# the Python package (apex.normalization) and the one CUDA extension it needs,
# fused_layer_norm_cuda, compiled as apex's own setup.py compiles it; none of apex's other
# extensions (a full apex build takes far longer).
#
# Usage: scripts/build_apex.sh [ARCHIVE]
#   ARCHIVE       apex source .tar.gz (default: ../shared/third_party/apex-6424da3b.tar.gz from the
#                 repository root)
#   PYTHON        the environment's interpreter (default: python)
#   BUILD_DIR     where to extract and build (default: a temporary folder, removed afterwards)
#   TORCH_CUDA_ARCH_LIST, MAX_JOBS   as for any PyTorch extension (default: the GPUs present)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
archive="${1:-$repo_root/../shared/third_party/apex-6424da3b.tar.gz}"
python="${PYTHON:-python}"

die() {
    echo "build_apex.sh: $*" >&2
    exit 1
}

[[ -f "$archive" ]] || die "no apex source archive at $archive (give its path as the argument)"
command -v "$python" >/dev/null || die "no Python interpreter '$python' (set PYTHON)"

if [[ -n "${BUILD_DIR:-}" ]]; then
    build_dir="$BUILD_DIR"
    mkdir -p "$build_dir"
else
    build_dir="$(mktemp -d)"
    trap 'rm -rf "$build_dir"' EXIT
fi
tar -xzf "$archive" -C "$build_dir" 2>/dev/null || die "$archive is not a .tar.gz archive"
found="$(find "$build_dir" -maxdepth 3 -path '*/csrc/layer_norm_cuda.cpp' -print -quit)"
src="${found%/csrc/layer_norm_cuda.cpp}"
[[ -n "$found" && -f "$src/csrc/layer_norm_cuda_kernel.cu" && -f "$src/apex/normalization/__init__.py" ]] \
    || die "$archive is not an apex source tree (no csrc/layer_norm_cuda*, apex/normalization)"

# The toolchain: a CUDA build of torch and an nvcc where torch's extension builder looks for it.
toolchain="$("$python" - 2>/dev/null <<'EOF'
import torch
from torch.utils.cpp_extension import CUDA_HOME

print(torch.__version__, torch.version.cuda or "", CUDA_HOME or "", sep="\t")
EOF
)" || die "PyTorch does not import with $python (set PYTHON to the environment's interpreter)"
IFS=$'\t' read -r torch_version torch_cuda cuda_home <<<"$toolchain"
[[ -n "$torch_cuda" ]] || die "torch $torch_version is built without CUDA; install a CUDA build of torch"
[[ -n "$cuda_home" && -x "$cuda_home/bin/nvcc" ]] \
    || die "nvcc not found (torch looks in CUDA_HOME, PATH, /usr/local/cuda); install the CUDA $torch_cuda toolkit"

# apex's setup.py, cut down to this one extension (same sources and compiler flags).
cat >"$src/setup.py" <<'EOF'
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

setup(
    name="apex",
    version="0.1",
    description="NVIDIA apex: apex.normalization and fused_layer_norm_cuda only (elmbench build)",
    packages=find_packages(include=("apex", "apex.*")),
    ext_modules=[
        CUDAExtension(
            name="fused_layer_norm_cuda",
            sources=["csrc/layer_norm_cuda.cpp", "csrc/layer_norm_cuda_kernel.cu"],
            extra_compile_args={
                "cxx": ["-O3"],
                "nvcc": ["-maxrregcount=50", "-O3", "--use_fast_math"],
            },
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
EOF

echo "build_apex.sh: building fused_layer_norm_cuda with torch $torch_version, CUDA $torch_cuda ($cuda_home)"
# No build isolation: the extension must compile against the torch that will load it.
"$python" -m pip install --no-build-isolation --no-deps --no-index "$src"

# Outside the source tree, so that the installed package is the one imported.
cd /
"$python" - <<'EOF'
import fused_layer_norm_cuda  # noqa: F401
import torch
from apex.normalization import FusedRMSNorm

x = torch.randn(4, 64, device="cuda", dtype=torch.bfloat16)
norm = FusedRMSNorm(64, eps=1e-6).to("cuda", torch.bfloat16)
want = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16()
torch.testing.assert_close(norm(x), want, rtol=1.6e-2, atol=1e-2)
print("build_apex.sh: apex FusedRMSNorm works on", torch.cuda.get_device_name())
EOF
