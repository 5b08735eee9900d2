"""MLX RMSNorm variants: each equals the released formula within a dtype-aware bound, and the
registry answers MLX names, other-backend names and typos with one clear error."""

from __future__ import annotations

import numpy as np
import pytest

from elmbench.errors import ConfigError, UnknownNameError
from elmbench.norms import get_norm, parse_norms, variants

mx = pytest.importorskip("mlx.core")

MLX_VARIANTS = ["naive", "fused", "compiled"]
DIM, EPS = 1280, 1e-6
# Unit roundoff: half the spacing of the significand (fp32 24 bits, fp16 11, bf16 8).
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def _inputs(dtype: str) -> tuple[object, object, np.ndarray]:
    """x (4, 7, DIM) and a non-trivial weight in `dtype`, and the float64 exact result."""
    rng = np.random.default_rng(1)
    dt = getattr(mx, dtype)
    x = mx.array((3 * rng.standard_normal((4, 7, DIM))).astype(np.float32)).astype(dt)
    w = mx.array((1 + 0.5 * rng.standard_normal(DIM)).astype(np.float32)).astype(dt)
    x64 = np.array(x.astype(mx.float32), dtype=np.float64)
    w64 = np.array(w.astype(mx.float32), dtype=np.float64)
    exact = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + EPS) * w64
    return x, w, exact


def _run(name: str, x: object, w: object) -> np.ndarray:
    norm = get_norm(name, "mlx").build(DIM, EPS)
    norm.weight = w
    out = norm(x)
    assert out.dtype == x.dtype  # type: ignore[attr-defined]
    return np.array(out.astype(mx.float32), dtype=np.float64)


def test_registry_lists_the_mlx_variants() -> None:
    assert sorted(variants("mlx")) == sorted(MLX_VARIANTS)
    for name in MLX_VARIANTS:
        variant = get_norm(name, "mlx")
        assert variant.backend == "mlx" and variant.available().ok
        assert not variant.changes_numerics
    assert [v.name for v in parse_norms("all", "mlx")] == MLX_VARIANTS


@pytest.mark.parametrize("name", MLX_VARIANTS)
def test_variant_owns_a_weight_of_ones(name: str) -> None:
    from mlx.utils import tree_flatten

    norm = get_norm(name, "mlx").build(48, EPS)
    params = dict(tree_flatten(norm.parameters()))
    assert list(params) == ["weight"]  # the checkpoint key, and nothing else (no eps, no fn)
    assert params["weight"].shape == (48,)
    np.testing.assert_array_equal(np.array(params["weight"]), np.ones(48, dtype=np.float32))


def test_naive_is_the_released_formula() -> None:
    """fp32 math, one cast back, then the weight: bf16 output is within 2 roundings of exact."""
    for dtype in ("float32", "bfloat16", "float16"):
        x, w, exact = _inputs(dtype)
        got = _run("naive", x, w)
        u = UNIT_ROUNDOFF[dtype]
        # Two roundings (the cast, the weight product) in the dtype, plus fp32 rsqrt/mean error
        # (a few fp32 ulps); the 1e-6 floor covers fp16 subnormals (spacing 6e-8).
        bound = (2 * u + 8 * UNIT_ROUNDOFF["float32"]) * np.abs(exact) + 1e-6
        assert np.all(np.abs(got - exact) <= bound), dtype


@pytest.mark.parametrize("name", ["fused", "compiled"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_variant_matches_naive(name: str, dtype: str) -> None:
    x, w, exact = _inputs(dtype)
    naive, got = _run("naive", x, w), _run(name, x, w)
    u = UNIT_ROUNDOFF[dtype]
    if dtype == "float32":
        # Same formula in fp32; only reduction order and rsqrt implementation may differ.
        np.testing.assert_allclose(got, naive, rtol=1e-5, atol=1e-6)
        return
    # naive rounds twice (cast, then weight product), a fused kernel may round once: within
    # 3u of each other relative to the exact value. (On the CPU they are bit-identical; a real
    # difference, e.g. the norm computed in bf16 arithmetic, reaches tens of u.)
    assert np.all(np.abs(got - naive) <= 3 * u * np.abs(exact) + 1e-6)


def test_weight_is_applied() -> None:
    """A variant that ignored its weight would still normalize: check the weight matters."""
    x, w, _ = _inputs("float32")
    for name in MLX_VARIANTS:
        ones = get_norm(name, "mlx").build(DIM, EPS)(x)
        assert np.abs(np.array(ones) - _run(name, x, w)).max() > 0.1, name


def test_other_backend_variant_lists_the_mlx_variants() -> None:
    with pytest.raises(ConfigError) as info:
        get_norm("apex", "mlx")
    message = str(info.value)
    assert message.startswith("norm 'apex' exists only for the torch backend, not mlx; mlx norms:")
    assert message.endswith("compiled, fused, naive")
    assert "\n" not in message


def test_unknown_mlx_norm_suggests_the_closest() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean 'fused'"):
        get_norm("fusd", "mlx")
    with pytest.raises(UnknownNameError, match="Did you mean 'naive'"):
        parse_norms("naive,naiv", "mlx")
