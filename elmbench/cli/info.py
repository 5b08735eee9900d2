"""Commands that describe rather than measure: `models`, `norms` and `env`."""

from __future__ import annotations

import sys
from typing import Any

import click

from elmbench.cli.options import Column, backend_option, emit, format_option, show
from elmbench.config import PRESETS, ElmConfig, get_config


def model_row(cfg: ElmConfig) -> dict[str, Any]:
    """The architecture summary of one preset, flat and JSON-ready."""
    return {
        "name": cfg.name,
        "official_name": cfg.official_name,
        "layers": cfg.num_layers,
        "model_dim": cfg.model_dim,
        "head_dim": cfg.head_dim,
        "query_heads_first": cfg.num_query_heads[0],
        "query_heads_last": cfg.num_query_heads[-1],
        "kv_heads_first": cfg.num_kv_heads[0],
        "kv_heads_last": cfg.num_kv_heads[-1],
        "ffn_dim_min": min(cfg.ffn_dims),
        "ffn_dim_max": max(cfg.ffn_dims),
        "params": cfg.num_params,
        "norms_per_forward": cfg.num_norms,
        "kv_cache_bytes_per_token_bf16": cfg.kv_cache_bytes_per_token(),
    }


def layer_rows(cfg: ElmConfig) -> list[dict[str, Any]]:
    """One row per transformer layer; weight shapes are (out_features, in_features)."""
    d, h = cfg.model_dim, cfg.head_dim
    rows = []
    for i in range(cfg.num_layers):
        n_q, n_kv, f = cfg.num_query_heads[i], cfg.num_kv_heads[i], cfg.ffn_dims[i]
        rows.append(
            {
                "layer": i,
                "query_heads": n_q,
                "kv_heads": n_kv,
                "qkv_proj_shape": [(n_q + 2 * n_kv) * h, d],
                "out_proj_shape": [d, n_q * h],
                "ffn_dim": f,
                "proj_1_shape": [2 * f, d],  # SwiGLU: gate and up projections stacked
                "proj_2_shape": [d, f],
                "params": cfg.layer_params(i),
            }
        )
    return rows


def _span(header: str, first: str, last: str) -> Column:
    """A first→last column; one value when both ends agree (the tiny model's FFN, say)."""

    def cell(row: dict[str, Any]) -> str:
        a, b = row[first], row[last]
        return f"{a}" if a == b else f"{a}→{b}"

    return Column(header, cell, numeric=True)


def _heads(row: dict[str, Any]) -> str:
    """Query/KV heads of the first and last layer in one cell (the 100-column table needs it)."""
    first = f"{row['query_heads_first']}/{row['kv_heads_first']}"
    last = f"{row['query_heads_last']}/{row['kv_heads_last']}"
    return first if first == last else f"{first}→{last}"


def _dim(header: str, key: str) -> Column:
    """Dimensions read as in the code (2048, like the shapes); counts get thousands separators."""
    return Column(header, lambda row: str(row[key]), numeric=True)


MODEL_COLUMNS = [
    Column.key("name", "name"),
    Column.key("official name", "official_name"),
    Column.key("layers", "layers", numeric=True),
    _dim("dim", "model_dim"),
    _dim("head dim", "head_dim"),
    Column("heads q/kv", _heads, numeric=True),
    _span("FFN width", "ffn_dim_min", "ffn_dim_max"),
    Column.key("params", "params", numeric=True),
    Column.key("norms", "norms_per_forward", numeric=True),
    Column.key("KV B/tok", "kv_cache_bytes_per_token_bf16", numeric=True),
]
MODEL_LEGEND = (
    "dim: model dim; heads (query/KV) and FFN width: first→last layer; params: tied embedding "
    "counted once; norms: RMSNorms per forward pass; KV B/tok: bf16 KV-cache bytes per token."
)

LAYER_COLUMNS = [
    Column.key("layer", "layer", numeric=True),
    Column.key("query heads", "query_heads", numeric=True),
    Column.key("KV heads", "kv_heads", numeric=True),
    Column.key("qkv_proj", "qkv_proj_shape", numeric=True),
    Column.key("out_proj", "out_proj_shape", numeric=True),
    _dim("FFN width", "ffn_dim"),
    Column.key("proj_1", "proj_1_shape", numeric=True),
    Column.key("proj_2", "proj_2_shape", numeric=True),
    Column.key("params", "params", numeric=True),
]


@click.command()
@click.argument("name", required=False)
@format_option
def models(name: str | None, fmt: str) -> None:
    """List the OpenELM presets, or one model's per-layer shapes with NAME.

    NAME is a preset (270m, 450m, 1_1b, 3b, their -instruct twins, tiny) or an official name such
    as OpenELM-1_1B or apple/OpenELM-1_1B-Instruct, in any case.
    """
    if name is None:
        rows = [model_row(cfg) for cfg in PRESETS.values()]
        emit(rows, MODEL_COLUMNS, fmt, title="OpenELM presets", notes=[MODEL_LEGEND])
        return
    cfg = get_config(name)
    summary, rows = model_row(cfg), layer_rows(cfg)
    notes = [
        f"{cfg.official_name or cfg.name}: {cfg.num_params:,} parameters "
        f"(embedding {cfg.vocab_size:,}×{cfg.model_dim:,}, tied), "
        f"{cfg.num_norms} RMSNorms per forward pass, "
        f"{cfg.kv_cache_bytes_per_token():,} KV-cache bytes per token (bf16)"
    ]
    title = f"{cfg.name}: {cfg.num_layers} layers; weight shapes are (out, in)"
    emit(
        rows, LAYER_COLUMNS, fmt, title=title, notes=notes, data={"model": summary, "layers": rows}
    )


NORM_COLUMNS = [
    Column.key("backend", "backend", group=True),
    Column.key("variant", "label", max_width=18),
    Column.key("runs here", "available"),
    Column(
        "what it is / why not here",
        lambda r: (
            r["summary"]
            + (
                ""
                if r["available"]
                else f"\nnot here: {r['reason']}" + (f"\nhint: {r['hint']}" if r["hint"] else "")
            )
        ),
    ),
]


@click.command()
@backend_option(default="all", allow_all=True)
@format_option
def norms(backend: str, fmt: str) -> None:
    """List the norm variants per backend and whether each can run here.

    Unavailable variants say why and how to get them. Variants marked 'ablation' are not RMSNorm
    and change the model's numerics.
    """
    from elmbench.envinfo import norm_status
    from elmbench.norms import BACKENDS

    rows = norm_status(BACKENDS if backend == "all" else (backend.lower(),))
    ok = sum(r["available"] for r in rows)
    notes = [f"{ok} of {len(rows)} variants can run here."]
    if not rows:
        notes = [f"No norm variants are registered for the {backend} backend."]
    emit(rows, NORM_COLUMNS, fmt, title="Normalization variants", notes=notes)


DEVICE_COLUMNS = [
    Column.key("device", "name"),
    Column.key("what", "label", max_width=28),
    Column("backends", lambda r: ", ".join(r["backends"])),
    Column("peak GB/s", lambda r: _figure(r["bandwidth_gb_per_s"], 1), numeric=True),
    Column("bf16 TFLOP/s", lambda r: _figure(r["peak_bf16_flop_per_s"], 1e12), numeric=True),
    Column("fp16 TFLOP/s", lambda r: _figure(r["peak_fp16_flop_per_s"], 1e12), numeric=True),
    Column("memory GiB", lambda r: _figure(r["memory_gib"], 1), numeric=True),
    Column.key("here", "present"),
]


def _figure(value: float | None, unit: float) -> str:
    if value is None:
        return "-"
    return f"{value / unit:,.0f}"


@click.command()
@format_option
def devices(fmt: str) -> None:
    """List device profiles: peak bandwidth and FLOP/s, backends, which are here.

    The figures are the vendors' published peaks (dense, never the sparse figure); the rooflines
    of `throughput` and `profile` are shares of them. A CPU has no published figure: its
    bandwidth is measured at run time. Use a profile's name with --device.
    """
    from elmbench.devices import PROFILES, detect, match_profile

    present = {match_profile(d).name: d.hardware for d in detect()}
    rows = []
    for profile in PROFILES.values():
        row = profile.to_record()
        if profile.measured:
            row["bandwidth_gb_per_s"] = None  # measured at run time
        row["present"] = "yes" if profile.name in present else "no"
        rows.append(row)
    notes = [f"here: {', '.join(f'{k} ({v})' for k, v in present.items())}"]
    notes.append("cpu and mlx-cpu: bandwidth measured at run time; no peak FLOP/s is assumed")
    emit(rows, DEVICE_COLUMNS, fmt, title="Device profiles", notes=notes)


ENV_COLUMNS = [
    Column.key("section", "section", group=True),
    Column.key("item", "item"),
    Column.key("value", "value"),
]


def env_rows(info: dict[str, Any]) -> list[dict[str, str]]:
    """Flatten `envinfo.gather()` into (section, item, value) rows for tables and CSV."""
    rows = []
    for section, items in info.items():
        for item, value in _flatten(items):
            rows.append({"section": section, "item": item, "value": _env_value(item, value)})
    return rows


def _flatten(items: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if not isinstance(items, dict):
        return [(prefix, items)]
    out: list[tuple[str, Any]] = []
    for key, value in items.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.extend(_flatten(value, name) if isinstance(value, dict) and value else [(name, value)])
    return out


def _env_value(item: str, value: Any) -> str:
    if item.endswith("bytes") and isinstance(value, int):
        return f"{value / 2**30:.1f} GiB"
    if isinstance(value, list):
        if not value:
            return "none"
        if all(isinstance(v, dict) for v in value):  # CUDA devices
            return "; ".join(
                f"{v.get('index')}: {v.get('name')} ({v.get('memory_bytes', 0) / 2**30:.1f} GiB)"
                for v in value
            )
        return ", ".join(map(str, value))
    if value == {}:
        return "none"
    return show(value)


@click.command()
@format_option
def env(fmt: str) -> None:
    """Show versions, CPU, GPUs, MLX and what elmbench can run here.

    Covers Python, elmbench, torch, mlx, mlx-lm, lm-eval, transformers and NVIDIA apex; CUDA GPUs;
    Apple silicon and MPS; the MLX default device; the backends, devices and norm variants usable
    on this machine.
    """
    from elmbench.envinfo import gather

    info = gather()
    emit(env_rows(info), ENV_COLUMNS, fmt, title="elmbench environment", data=info)


@click.group(invoke_without_command=True)
@format_option
@click.pass_context
def suites(ctx: click.Context, fmt: str) -> None:
    """List the shipped suites; `suites validate [FILE...]` checks suite files."""
    if ctx.invoked_subcommand is not None:
        return
    from elmbench.suites import list_suites, load_suite

    rows = []
    for path in list_suites():
        suite = load_suite(path)
        rows.append({"name": path.stem, "kind": getattr(suite, "kind", "accuracy"),
                     "description": getattr(suite, "description", "")})  # fmt: skip
    columns = [
        Column.key("suite", "name"),
        Column.key("kind", "kind"),
        Column.key("description", "description", max_width=80),
    ]
    emit(rows, columns, fmt, notes=["Run one with --suite NAME; --suite also takes a file."])


@suites.command("validate")
@click.argument("files", nargs=-1)
def validate(files: tuple[str, ...]) -> None:
    """Check suite files (default: every file in suites/); one line per problem.

    Accuracy suites' task names are checked against lm-eval's task index (a few seconds).
    """
    from elmbench.accuracy.inputs import check_task_names
    from elmbench.accuracy.suites import AccuracySuite
    from elmbench.errors import ElmbenchError
    from elmbench.suites import list_suites, load_suite, suite_path

    paths = [suite_path(f) for f in files] or list_suites()
    bad = 0
    for path in paths:
        try:
            suite = load_suite(path)
            if isinstance(suite, AccuracySuite):
                check_task_names(suite.tasks, str(path))
        except ElmbenchError as exc:
            bad += 1
            click.echo(f"error: {exc}", err=True)
        else:
            click.echo(f"ok: {path}")
    if bad:
        sys.exit(2)


COMMANDS = [models, devices, norms, suites, env]
