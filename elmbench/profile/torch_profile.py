"""The throughput loop under `torch.profiler`: TensorBoard and Chrome traces, and time by part.

Prefill and decode are profiled in separate loops. Parts are labelled only while profiling:
OpenELM's non-module parts by `openelm_torch.part`, modules (OpenELM and HF) by forward hooks.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.autograd.profiler_util import FunctionEvent
from torch.profiler import ProfilerActivity, record_function

from elmbench.backends import Backend, ModelSpec, create_backend, decode_steps
from elmbench.errors import ConfigError, ElmbenchError
from elmbench.models import openelm_torch
from elmbench.models.openelm_torch import PART_PREFIX
from elmbench.profile import PhaseProfile, ProfileResult, check_sizes, parse_phase
from elmbench.profile.categories import (
    OpEvent,
    by_category,
    by_part,
    norm_share_by_step,
    norm_summary,
    op_table,
    top_ops,
    what_if_without_norm,
)

PHASE_PREFIX = "elm_phase::"
SETUP_RANGE = "elm_setup::prefill"

# Module name (its last dotted component) -> part, for OpenELM and the HF comparison models.
MODULE_PARTS: dict[str, str] = {
    "token_embeddings": "embedding",
    "embed_tokens": "embedding",
    "attn_norm": "attn_norm",
    "input_layernorm": "attn_norm",
    "q_norm": "q_norm",
    "k_norm": "k_norm",
    "qkv_proj": "qkv_proj",
    "q_proj": "qkv_proj",
    "k_proj": "qkv_proj",
    "v_proj": "qkv_proj",
    "out_proj": "out_proj",
    "o_proj": "out_proj",
    "ffn_norm": "ffn_norm",
    "post_attention_layernorm": "ffn_norm",
    "proj_1": "proj_1",
    "gate_proj": "proj_1",
    "up_proj": "proj_1",
    "proj_2": "proj_2",
    "down_proj": "proj_2",
    "act_fn": "activation",
    "rotary_emb": "rope",
    "lm_head": "head",
}
FINAL_NORMS = ("transformer.norm", "model.norm")


def module_part(name: str) -> str | None:
    """The part a module (by its dotted name in the model) is labelled as, if any."""
    if name in FINAL_NORMS or name.endswith(tuple("." + n for n in FINAL_NORMS)):
        return "final_norm"
    return MODULE_PARTS.get(name.rpartition(".")[2])


def _hooks(label: str) -> tuple[Callable[..., None], Callable[..., None]]:
    # A stack, because a module called re-entrantly must close its own range.
    ranges: list[Any] = []

    def enter(module: nn.Module, args: Any) -> None:
        rf = record_function(label)
        rf.__enter__()
        ranges.append(rf)

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        if ranges:
            ranges.pop().__exit__(None, None, None)

    return enter, leave


@contextlib.contextmanager
def label_parts(model: nn.Module) -> Iterator[int]:
    """Label every model part for the profiler while inside; yields how many modules got hooks."""
    handles = []
    try:
        for name, module in model.named_modules():
            part = module_part(name)
            if part is None:
                continue
            enter, leave = _hooks(PART_PREFIX + part)
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave, always_call=True))
        with openelm_torch.part_labels():
            yield len(handles) // 2
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class _Loop:
    """The throughput loop's steps over a backend or a bare model."""

    model: nn.Module
    device: torch.device
    setup: Callable[[int, int], None]
    prefill: Callable[[Any], Any]
    decode: Callable[[Any, int], Any]
    sync: Callable[[Any], None]
    as_input: Callable[[np.ndarray], Any]  # host tokens -> what `prefill` takes
    name: str
    norm: str
    dtype: str
    vocab_size: int


def _loop_for(target: Any) -> _Loop:
    if isinstance(target, ModelSpec):
        target = create_backend("torch", target)
    if isinstance(target, Backend):
        if target.name != "torch":
            raise ElmbenchError(
                f"profile_torch needs the torch backend, got '{target.name}'; "
                "profile MLX with elmbench.profile.mlx_profile.profile_mlx"
            )
        backend: Any = target
        return _Loop(
            backend.model,
            backend.device,
            backend.setup,
            backend.prefill,
            backend.decode,
            backend.synchronize,
            lambda tokens: tokens,
            backend.config.name,
            backend.spec.norm,
            backend.spec.dtype,
            int(backend.config.vocab_size),
        )
    if not isinstance(target, nn.Module) or not hasattr(target, "decode"):
        raise ElmbenchError(
            f"cannot profile a {type(target).__name__}: give a torch Backend, a ModelSpec, or a "
            "model with setup_cache/prefill/decode"
        )
    model: Any = target
    param = next(model.parameters())
    device = param.device

    @torch.inference_mode()
    def prefill(tokens: torch.Tensor) -> torch.Tensor:
        return model.prefill(tokens).argmax(-1)

    @torch.inference_mode()
    def decode(tokens: torch.Tensor, position: int) -> torch.Tensor:
        return model.decode(tokens, position).argmax(-1)

    def sync(value: Any = None) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    return _Loop(
        model,
        device,
        model.setup_cache,
        prefill,
        decode,
        sync,
        lambda tokens: torch.as_tensor(tokens, dtype=torch.long, device=device),
        model.config.name,
        getattr(model, "norm_name", "?"),
        str(param.dtype).removeprefix("torch."),
        int(model.config.vocab_size),
    )


def _range(name: str, on: bool) -> contextlib.AbstractContextManager[Any]:
    return record_function(name) if on else contextlib.nullcontext()


def _iteration(loop: _Loop, prompt: Any, phase: str, gen_tokens: int, labelled: bool) -> float:
    """One loop iteration (setup, prefill, decode steps); returns the phase's wall time in ms."""
    b, t = prompt.shape
    loop.setup(b, t + gen_tokens)
    if phase == "decode":
        with _range(SETUP_RANGE, labelled):  # fills the cache; outside the measured range
            tok = loop.prefill(prompt)
            loop.sync(tok)
    start = time.perf_counter()
    with _range(PHASE_PREFIX + phase, labelled):
        if phase == "prefill":
            tok = loop.prefill(prompt)
        else:
            tok = decode_steps(loop.decode, tok, t, gen_tokens)[-1]
        loop.sync(tok)
    return 1e3 * (time.perf_counter() - start)


def _is_cpu_op(e: FunctionEvent) -> bool:
    return e.device_type == torch.autograd.DeviceType.CPU and not e.is_async


def op_events(events: list[FunctionEvent], phase: str) -> tuple[list[OpEvent], Counter[str], int]:
    """Events inside the phase's ranges as OpEvents; label calls per part; how many ranges."""
    root = PHASE_PREFIX + phase
    out: list[OpEvent] = []
    calls: Counter[str] = Counter()
    # CPU ranges only: on CUDA each range also has a device-side annotation of the same name.
    roots = sorted(
        (e for e in events if e.name == root and _is_cpu_op(e)), key=lambda e: e.time_range.start
    )
    step_of = {id(r): i for i, r in enumerate(roots)}
    for e in events:
        if not _is_cpu_op(e):
            continue  # device kernels are counted on the CPU op that launched them
        if e.name == root:
            # The phase range's own time: Python and framework work between the model's ops.
            out.append(
                OpEvent(
                    e.name,
                    e.self_cpu_time_total,
                    _kernel_us(e),
                    len(e.kernels),
                    is_label=True,
                    step=step_of[id(e)],
                )
            )
            continue
        chain: list[str] = []
        part: str | None = None
        node: FunctionEvent | None = e
        inside = False
        while node is not None:
            if node.name == root:
                inside = True
                break
            if node.name.startswith(PART_PREFIX):
                part = part or node.name[len(PART_PREFIX) :]
            elif part is None:
                chain.append(node.name)
            node = node.cpu_parent
        if not inside:
            continue
        is_label = e.name.startswith(PART_PREFIX)
        if is_label:
            calls[e.name[len(PART_PREFIX) :]] += 1
        out.append(
            OpEvent(
                name=e.name,
                self_cpu_us=e.self_cpu_time_total,
                self_device_us=_kernel_us(e),
                kernels=len(e.kernels),
                part=part,
                chain=tuple(reversed(chain)),
                is_label=is_label,
                is_leaf="::" in e.name and not any(_is_cpu_op(c) for c in e.cpu_children),
                total_us=e.cpu_time_total if is_label else 0.0,
                step=step_of.get(id(node), 0),
            )
        )
    return out, calls, len(roots)


def _kernel_us(e: FunctionEvent) -> float:
    return float(sum(k.duration for k in e.kernels))


class _TraceFiles:
    """on_trace_ready: TensorBoard's handler writes the trace once; the Chrome trace is that
    same file linked (a kineto trace can be exported only once per profile)."""

    def __init__(self, run_dir: Path, chrome_path: Path, use_gzip: bool) -> None:
        self.run_dir, self.chrome_path = run_dir, chrome_path
        self.handler = torch.profiler.tensorboard_trace_handler(str(run_dir), use_gzip=use_gzip)
        self.written: list[Path] = []

    def __call__(self, prof: torch.profiler.profile) -> None:
        before = set(self.run_dir.glob("*.pt.trace.json*")) if self.run_dir.exists() else set()
        self.handler(prof)
        new = sorted(set(self.run_dir.glob("*.pt.trace.json*")) - before)
        self.written += new
        if new:
            self.chrome_path.unlink(missing_ok=True)
            try:
                os.link(new[-1], self.chrome_path)
            except OSError:  # file systems without hard links
                self.chrome_path.write_bytes(new[-1].read_bytes())


def profile_torch(
    model_or_backend: Backend | ModelSpec | nn.Module,
    phase: str = "decode",
    prompt_tokens: int = 128,
    gen_tokens: int = 32,
    batch_size: int = 1,
    trace_dir: Path | None = None,
    schedule: tuple[int, int, int] = (1, 1, 3),
    seed: int = 0,
    run_label: str | None = None,
    record_shapes: bool = True,
    with_stack: bool = False,
    profile_memory: bool = False,
    use_gzip: bool = False,
    top_n: int = 15,
) -> ProfileResult:
    """Profile prefill and/or decode of a torch model; traces under `trace_dir/<label>-<phase>/`.

    Each phase runs its own loop: one warm-up iteration, `active` uninstrumented timed
    iterations, then wait + warmup + active profiler steps of which only the active are kept.
    """
    phases = parse_phase(phase)
    check_sizes(prompt_tokens, gen_tokens, batch_size)
    wait, warmup, active = schedule
    if wait < 0 or warmup < 0 or active < 1:
        raise ConfigError(
            f"schedule (wait, warmup, active) = {schedule}: wait and warmup must be >= 0 and "
            "active >= 1"
        )
    # Validates the model (and the norm: apex without CUDA fails here) before any work.
    loop = _loop_for(model_or_backend)
    prompt = loop.as_input(
        np.random.default_rng(seed).integers(0, loop.vocab_size, (batch_size, prompt_tokens))
    )
    label = run_label or f"{loop.name}-{loop.norm}"
    results = {
        ph: _profile_phase(
            loop,
            prompt,
            ph,
            gen_tokens,
            (wait, warmup, active),
            None if trace_dir is None else Path(trace_dir),
            f"{label}-{ph}",
            record_shapes,
            with_stack,
            profile_memory,
            use_gzip,
            top_n,
        )
        for ph in phases
    }
    return ProfileResult(
        backend="torch",
        model=loop.name,
        norm=loop.norm,
        device=str(loop.device),
        batch_size=batch_size,
        prompt_tokens=prompt_tokens,
        gen_tokens=gen_tokens,
        settings={
            "dtype": loop.dtype,
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "schedule_wait": wait,
            "schedule_warmup": warmup,
            "schedule_active": active,
            "seed": seed,
        },
        phases=results,
    )


def _profile_phase(
    loop: _Loop,
    prompt: Any,
    phase: str,
    gen_tokens: int,
    schedule: tuple[int, int, int],
    trace_dir: Path | None,
    run_name: str,
    record_shapes: bool,
    with_stack: bool,
    profile_memory: bool,
    use_gzip: bool,
    top_n: int,
) -> PhaseProfile:
    wait, warmup, active = schedule
    _iteration(loop, prompt, phase, gen_tokens, labelled=False)  # warm-up: allocator, lazy init
    wall = [_iteration(loop, prompt, phase, gen_tokens, labelled=False) for _ in range(active)]

    activities = [ProfilerActivity.CPU]
    device_time = loop.device.type == "cuda"
    if device_time:
        activities.append(ProfilerActivity.CUDA)
    traces: dict[str, str] = {}
    writer = None
    if trace_dir is not None:
        suffix = ".json.gz" if use_gzip else ".json"
        writer = _TraceFiles(
            trace_dir / run_name, trace_dir / f"{run_name}.chrome{suffix}", use_gzip
        )
    instrumented: list[float] = []
    with (
        label_parts(loop.model),
        torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1),
            on_trace_ready=writer,
            record_shapes=record_shapes,
            with_stack=with_stack,
            profile_memory=profile_memory,
        ) as prof,
    ):
        for i in range(wait + warmup + active):
            ms = _iteration(loop, prompt, phase, gen_tokens, labelled=True)
            if i >= wait + warmup:
                instrumented.append(ms)
            prof.step()
    events, calls, ranges = op_events(list(prof.events()), phase)
    if ranges != active:
        raise ElmbenchError(
            f"profiler kept {ranges} '{phase}' ranges, expected {active}; is another profiler "
            "running in this process?"
        )
    if writer is not None and writer.written:
        traces = {
            "tensorboard_run_dir": str(writer.run_dir),
            "tensorboard": str(writer.written[-1]),
            "chrome": str(writer.chrome_path),
        }

    parts = by_part(events, active, device_time, calls)
    categories = by_category(events, device_time)
    norm = norm_summary(parts)
    by_step = norm_share_by_step(events, device_time)
    norm["share_pct_by_step"] = by_step
    norm["share_pct_median_step"] = statistics.median(by_step)
    b, t = prompt.shape
    forwards = 1 if phase == "prefill" else gen_tokens
    tokens = b * (t if phase == "prefill" else gen_tokens)
    profile = PhaseProfile(
        phase=phase,
        steps=active,
        forwards_per_step=forwards,
        tokens_per_step=tokens,
        time_basis="device_kernel_time" if device_time else "cpu_self_time",
        categories=categories,
        parts=parts,
        norm=norm,
        what_if={},
        wall_ms_per_step=wall,
        instrumented_ms_per_step=sum(instrumented) / len(instrumented),
        top_ops=top_ops(events, top_n, device_time),
        op_rows=op_table(events, active),
        categories_cpu=by_category(events, False) if device_time else None,
        traces=traces,
        notes=_notes(loop, device_time),
    )
    profile.what_if = what_if_without_norm(profile.wall_ms_per_token, profile.norm_share_pct)
    return profile


def _notes(loop: _Loop, device_time: bool) -> list[str]:
    notes = [
        "shares are of exclusive time inside the phase ranges; the share is measured with the "
        "profiler on, the what-if applies it to the uninstrumented time per token"
    ]
    if not device_time:
        notes.append(
            "CPU: time includes the Python and dispatcher cost of each operator, which is what "
            "an unfused norm pays per step"
        )
    else:
        notes.append("CUDA: shares are of GPU kernel time; CPU launch time is in categories_cpu")
    if not isinstance(loop.model, openelm_torch.OpenELM):
        notes.append(
            "HF model: parts are labelled by module hooks; RoPE rotation and SDPA run inside "
            "attention code and fall to their operators' categories"
        )
    return notes
