"""MLX time by model part: the forward evaluated part by part, beside the plain lazy forward.

An approximation: `mx.eval` after each part breaks the lazy graph MLX would otherwise schedule
(and on Metal, fuse) as a whole, so the staged step is slower than the plain one; `overhead_pct`
says by how much. Metal capture of a plain step is an option on Apple silicon.
"""

from __future__ import annotations

import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx import nn

from elmbench.backends import Backend, ModelSpec, create_backend, decode_steps
from elmbench.errors import ConfigError, ElmbenchError, UnavailableError
from elmbench.models.openelm_mlx import OpenELM
from elmbench.profile import PhaseProfile, ProfileResult, check_sizes, parse_phase
from elmbench.profile.categories import (
    BETWEEN,
    PART_CATEGORY,
    PARTS,
    OpEvent,
    by_category,
    norm_summary,
    what_if_without_norm,
)

Timer = Callable[..., Any]  # (part, fn, *args) -> fn(*args), evaluated


def _untimed(part: str, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def staged_forward(
    model: OpenELM,
    tokens: mx.array,
    pos: int | None,
    last_only: bool = False,
    timer: Timer = _untimed,
    greedy: bool = False,
) -> mx.array:
    """OpenELM's forward written out part by part through `timer`: the model's logits, or with
    `greedy` the argmax tokens (the head part then includes the argmax, as the loop does)."""
    tr = model.transformer
    x = timer("embedding", tr.token_embeddings, tokens)
    b, t = tokens.shape
    offset = 0 if pos is None else pos
    mask = "causal" if t > 1 else None
    for layer in tr.layers:
        attn = layer.attn

        def qkv_proj(h: mx.array, attn: Any = attn) -> Any:
            qkv = attn.qkv_proj(h).reshape(b, t, attn.n_q + 2 * attn.n_kv, attn.head_dim)
            qkv = qkv.transpose(0, 2, 1, 3)  # (B, H_q + 2 H_kv, T, D)
            return mx.split(qkv, [attn.n_q, attn.n_q + attn.n_kv], axis=1)

        def rope(q: mx.array, k: mx.array, attn: Any = attn) -> tuple[mx.array, mx.array]:
            return attn.rope(q, offset), attn.rope(k, offset)

        def sdpa(q: mx.array, k: mx.array, v: mx.array, attn: Any = attn) -> mx.array:
            return mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.scale, mask=mask)

        def out_proj(o: mx.array, attn: Any = attn) -> mx.array:
            return attn.out_proj(o.transpose(0, 2, 1, 3).reshape(b, t, attn.n_q * attn.head_dim))

        def activation(g_up: mx.array) -> mx.array:
            gate, up = mx.split(g_up, 2, axis=-1)
            return nn.silu(gate) * up

        h = timer("attn_norm", layer.attn_norm, x)
        q, k, v = timer("qkv_proj", qkv_proj, h)
        q = timer("q_norm", attn.q_norm, q)
        k = timer("k_norm", attn.k_norm, k)
        q, k = timer("rope", rope, q, k)
        if pos is not None:
            if attn.cache is None:
                raise RuntimeError("setup_cache() must be called before cached steps")
            k, v = timer("kv_cache", attn.cache.update, pos, k, v)  # (B, H_kv, pos + T, D)
        o = timer("sdpa", sdpa, q, k, v)
        a = timer("out_proj", out_proj, o)
        x = timer("residual", mx.add, x, a)
        h = timer("ffn_norm", layer.ffn_norm, x)
        g_up = timer("proj_1", layer.ffn.proj_1, h)
        f = timer("activation", activation, g_up)
        f = timer("proj_2", layer.ffn.proj_2, f)
        x = timer("residual", mx.add, x, f)
    x = timer("final_norm", tr.norm, x)
    if last_only:
        x = x[:, -1:]

    def head(x: mx.array) -> mx.array:
        logits = tr.token_embeddings.as_linear(x)  # tied head
        return mx.argmax(logits, axis=-1) if greedy else logits

    out: mx.array = timer("head", head, x)
    return out


class _PartTimer:
    """Evaluates each part's output at once and books the wall time to the part."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def __call__(self, part: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args)
        mx.eval(out)
        self.seconds[part] += time.perf_counter() - start
        self.calls[part] += 1
        return out


def _model_of(target: Any) -> tuple[OpenELM, str, str]:
    if isinstance(target, ModelSpec):
        target = create_backend("mlx", target)
    if isinstance(target, Backend):
        if target.name != "mlx":
            raise ElmbenchError(
                f"profile_mlx needs the mlx backend, got '{target.name}'; "
                "profile torch with elmbench.profile.torch_profile.profile_torch"
            )
        backend: Any = target
        return backend.model, backend.spec.norm, backend.spec.dtype
    if isinstance(target, OpenELM):
        return target, target.norm_name, str(target.dtype).rpartition(".")[2]
    raise ElmbenchError(
        f"cannot profile a {type(target).__name__} with MLX: give an MLX Backend, a ModelSpec "
        "or an elmbench.models.openelm_mlx.OpenELM"
    )


def check_metal_capture() -> None:
    """Metal capture needs Apple silicon (Metal) and MTL_CAPTURE_ENABLED=1 in the environment."""
    if not mx.metal.is_available():
        raise UnavailableError(
            "Metal capture",
            f"Metal is not available on this machine ({platform.system()} {platform.machine()})",
            "Capture on a Mac with Apple silicon",
        )
    if os.environ.get("MTL_CAPTURE_ENABLED") != "1":
        raise UnavailableError(
            "Metal capture",
            "MTL_CAPTURE_ENABLED is not set to 1",
            "Run with MTL_CAPTURE_ENABLED=1 in the environment (Metal reads it at start-up)",
        )


def profile_mlx(
    model_or_backend: Backend | ModelSpec | OpenELM,
    phase: str = "decode",
    prompt_tokens: int = 128,
    gen_tokens: int = 32,
    batch_size: int = 1,
    repeats: int = 3,
    seed: int = 0,
    metal_capture: Path | None = None,
) -> ProfileResult:
    """Per-part time of prefill and/or decode on MLX, staged, beside the plain step's time.

    Each phase: one warm-up, then `repeats` plain steps and `repeats` staged steps, interleaved.
    With `metal_capture` (a `.gputrace` path), one plain step per phase is captured afterwards.
    """
    phases = parse_phase(phase)
    check_sizes(prompt_tokens, gen_tokens, batch_size)
    if repeats < 1:
        raise ConfigError(f"repeats must be a positive integer, got {repeats!r}")
    if metal_capture is not None:
        check_metal_capture()
    model, norm, dtype = _model_of(model_or_backend)
    cfg = model.config
    host = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch_size, prompt_tokens))
    prompt = mx.array(host.astype(np.int32))
    results = {}
    for ph in phases:
        results[ph] = _profile_phase(model, prompt, ph, gen_tokens, repeats)
        if metal_capture is not None:
            path = Path(metal_capture)
            target = path.with_name(f"{path.stem}-{ph}.gputrace")
            mx.metal.start_capture(str(target))
            try:
                _step(model, prompt, ph, gen_tokens, None)
            finally:
                mx.metal.stop_capture()
            results[ph].traces["metal_capture"] = str(target)
    return ProfileResult(
        backend="mlx",
        model=cfg.name,
        norm=norm,
        device=str(mx.default_device()),
        batch_size=batch_size,
        prompt_tokens=prompt_tokens,
        gen_tokens=gen_tokens,
        settings={
            "dtype": dtype,
            "mlx_version": getattr(mx, "__version__", None),
            "repeats": repeats,
            "seed": seed,
        },
        phases=results,
    )


def _evaluate(token: mx.array) -> bool:
    """Evaluate a step's token now (never stops the loop)."""
    mx.eval(token)
    return False


def _step(model: OpenELM, prompt: mx.array, phase: str, gen_tokens: int, timer: Any) -> float:
    """One loop iteration; returns the phase's wall ms (staged through `timer` when given)."""
    b, t = prompt.shape
    model.setup_cache(b, t + gen_tokens)

    def forward(tokens: mx.array, pos: int, last_only: bool) -> mx.array:
        if timer is None:
            return mx.argmax(model(tokens, pos, last_only=last_only), axis=-1)
        return staged_forward(model, tokens, pos, last_only, timer, greedy=True)

    if phase == "decode":
        tok = mx.argmax(model.prefill(prompt), axis=-1)
        mx.eval(tok)
    start = time.perf_counter()
    if phase == "prefill":
        mx.eval(forward(prompt, 0, True))
    else:
        # Each step evaluated before the next, so staged part timings do not overlap.
        decode_steps(lambda tok, pos: forward(tok, pos, False), tok, t, gen_tokens, _evaluate)
    return 1e3 * (time.perf_counter() - start)


def _profile_phase(
    model: OpenELM, prompt: mx.array, phase: str, gen_tokens: int, repeats: int
) -> PhaseProfile:
    _step(model, prompt, phase, gen_tokens, None)  # warm-up: allocation, kernel compilation
    _step(model, prompt, phase, gen_tokens, _PartTimer())
    plain: list[float] = []
    staged: list[float] = []
    timer = _PartTimer()
    for _ in range(repeats):  # interleaved, so drift affects both alike
        plain.append(_step(model, prompt, phase, gen_tokens, None))
        staged.append(_step(model, prompt, phase, gen_tokens, timer))
    part_us = {p: 1e6 * s for p, s in timer.seconds.items()}
    # Glue between parts (Python, graph building outside them) is the step's remainder.
    part_us[BETWEEN] = max(0.0, 1e3 * sum(staged) - sum(part_us.values()))
    events = [
        OpEvent(f"mlx::{p}", us, part=None if p == BETWEEN else p, is_label=True)
        for p, us in part_us.items()
    ]
    total = sum(part_us.values())
    parts = [
        {
            "part": p,
            "category": PART_CATEGORY.get(p),
            "time_ms": part_us[p] / 1e3,
            "share_pct": 100.0 * part_us[p] / total if total else 0.0,
            "calls_per_step": timer.calls.get(p, 0) / repeats,
            "ops_per_step": None,
            "leaf_ops_per_step": None,
            "kernels_per_step": None,
            "ops_per_call": None,
        }
        for p in (*PARTS, BETWEEN)
        if p in part_us
    ]
    b, t = prompt.shape
    profile = PhaseProfile(
        phase=phase,
        steps=repeats,
        forwards_per_step=1 if phase == "prefill" else gen_tokens,
        tokens_per_step=b * (t if phase == "prefill" else gen_tokens),
        time_basis="mlx_staged_eval_wall_time",
        categories=by_category(events),
        parts=parts,
        norm=norm_summary(parts),
        what_if={},
        wall_ms_per_step=plain,
        instrumented_ms_per_step=sum(staged) / len(staged),
        notes=[
            "approximation: each part is evaluated on its own (mx.eval after it), which breaks "
            "the lazy graph MLX would schedule and fuse as a whole; overhead_pct is the cost",
            "the what-if applies the staged norm share to the plain (uninstrumented) time",
        ],
    )
    profile.what_if = what_if_without_norm(profile.wall_ms_per_token, profile.norm_share_pct)
    return profile
