"""The report's figures: matplotlib (Agg, no pyplot state) from typed records.

Every figure says its units, dtype and device in its title and axes; error bars are the records'
own intervals of the median; runs from different machines are separate, labelled series.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from elmbench.records import AccuracyRecord, Estimate, ProfileRecord, ThroughputRecord
from elmbench.report.tables import OLMO, LabelledRun

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

MAX_FIGURES_PER_KIND = 12  # a large matrix gets its first figures and a note, not hundreds
CATEGORY_COLORS = {
    "norm": "#d62728", "attention": "#1f77b4", "matmul": "#2ca02c", "rope": "#9467bd",
    "activation": "#ff7f0e", "embedding/head": "#8c564b", "memory/copy": "#7f7f7f",
    "other": "#bcbd22",
}  # fmt: skip


@dataclass(frozen=True)
class ReportFigure:
    """One figure: its file name (without suffix), its title and the matplotlib object."""

    name: str
    title: str
    figure: Figure
    section: str  # the table it belongs beside: throughput, profile, accuracy_<suite>, models


def _title(text: str, fig: Figure) -> str:
    """A long title wrapped onto lines that fit the figure's width (about 10 characters an inch
    at the default title size)."""
    import textwrap

    return "\n".join(textwrap.wrap(text, int(fig.get_figwidth() * 10)))


def _new(width: float = 11.0, height: float = 4.5, cols: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, cols, squeeze=False)[0]
    return fig, list(axes)


def _device(records: Iterable[Any]) -> str:
    """`torch/cpu on AMD EPYC` for the records' devices (several joined)."""
    seen: list[str] = []
    for r in records:
        context = getattr(r, "context", None)
        hardware = f" on {context.device_hardware}" if context is not None else ""
        text = f"{r.backend}/{r.device}{hardware}"
        if text not in seen:
            seen.append(text)
    return ", ".join(seen)


def _dtypes(records: Iterable[Any]) -> str:
    return ", ".join(dict.fromkeys(r.dtype for r in records))


def _shape(r: Any) -> str:
    return f"B{r.batch_size} P{r.prompt_tokens}+{r.gen_tokens}"


def _series_label(lr: LabelledRun, r: Any, fields: Sequence[str], show_run: bool) -> str:
    """A series name from the fields that vary within a figure (and the run, when several)."""
    parts = [lr.label] if show_run else []
    for name in fields:
        if name == "order":  # how the run ordered its cases, from the record's protocol
            parts.append(r.protocol.order)
            continue
        parts.append(_shape(r) if name == "shape" else f"{name} {getattr(r, name)}")
    return ", ".join(parts) or "measured"


def _several_runs(members: Iterable[tuple[LabelledRun, Any]]) -> bool:
    return len({lr.label for lr, _ in members}) > 1


def _varying(records: Sequence[Any], names: Sequence[str]) -> list[str]:
    def key(r: Any, name: str) -> Any:
        return _shape(r) if name == "shape" else getattr(r, name)

    return [n for n in names if len({key(r, n) for r in records}) > 1]


def _group(
    pairs: Iterable[tuple[LabelledRun, Any]], key: Callable[[Any], Any]
) -> dict[Any, list[tuple[LabelledRun, Any]]]:
    out: dict[Any, list[tuple[LabelledRun, Any]]] = {}
    for lr, r in pairs:
        out.setdefault(key(r), []).append((lr, r))
    return out


def _errors(estimates: Sequence[Estimate | None]) -> tuple[list[float], list[float], list[float]]:
    """Values and error-bar lengths below and above from each estimate's interval."""
    values, low, high = [], [], []
    for est in estimates:
        if est is None:
            values.append(float("nan"))
            low.append(0.0)
            high.append(0.0)
            continue
        values.append(est.value)
        low.append(est.value - est.ci_low if est.ci_low is not None else 0.0)
        high.append(est.ci_high - est.value if est.ci_high is not None else 0.0)
    return values, low, high


def _bars(
    ax: Axes,
    categories: Sequence[str],
    series: dict[str, list[Estimate | None]],
    ylabel: str,
    title: str,
    xlabel: str,
) -> None:
    """Grouped bars, one group per category, one bar per series, with interval error bars."""
    count = max(len(series), 1)
    width = 0.8 / count
    for i, (label, estimates) in enumerate(series.items()):
        values, low, high = _errors(estimates)
        xs = [j + (i - (count - 1) / 2) * width for j in range(len(categories))]
        ax.bar(xs, values, width, yerr=[low, high], capsize=3, label=label)
    ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize="small")


def norm_variant_figures(runs: Sequence[LabelledRun]) -> list[ReportFigure]:
    """Prefill and decode tokens/s per norm variant with interval error bars, per model, dtype
    and shape; series are the runs, devices, kernels and compile modes."""
    pairs = [(lr, r) for lr in runs for r in lr.run.of(ThroughputRecord)]
    figures = []
    groups = _group(pairs, lambda r: (r.model, r.dtype, _shape(r)))
    for (model, dtype, shape), members in sorted(groups.items())[:MAX_FIGURES_PER_KIND]:
        records = [r for _, r in members]
        norms = list(dict.fromkeys(r.norm for r in records))
        fields = _varying(records, ("backend", "device", "kernels", "compile"))
        if len({r.protocol.order for r in records}) > 1:
            fields.append("order")
        fig, (pre, dec) = _new(cols=2)
        for ax, metric, name in ((pre, "prefill_tokens_per_s", "Prefill"),
                                 (dec, "decode_tokens_per_s", "Decode")):  # fmt: skip
            series: dict[str, list[Estimate | None]] = {}
            for lr, r in members:
                label = _series_label(lr, r, fields, _several_runs(members))
                row = series.setdefault(label, [None] * len(norms))
                row[norms.index(r.norm)] = r.metrics.get(metric)
            _bars(ax, norms, series, "tokens/s", f"{name} ({shape})", "RMSNorm variant")
        title = (
            f"{model}: prefill and decode per RMSNorm variant "
            f"({dtype}, {_device(records)}; bars: 95% interval of the median)"
        )
        fig.suptitle(_title(title, fig))
        figures.append(
            ReportFigure(_name("norm_variants", model, dtype, shape), title, fig, "throughput")
        )
    return figures


def _name(*parts: str) -> str:
    text = "_".join(parts).lower()
    return "".join(c if c.isalnum() or c in "_-." else "-" for c in text)


def scaling_figures(runs: Sequence[LabelledRun]) -> list[ReportFigure]:
    """Tokens/s against prompt length and against batch size, where the runs vary them."""
    pairs = [(lr, r) for lr in runs for r in lr.run.of(ThroughputRecord)]
    figures = []
    for axis, xlabel, what in (("prompt_tokens", "prompt length (tokens)", "prompt length"),
                               ("batch_size", "batch size (sequences)", "batch size")):  # fmt: skip
        others = [f for f in ThroughputRecord.CASE if f != axis]
        lines: dict[tuple[Any, ...], list[tuple[LabelledRun, Any]]] = {}
        for lr, r in pairs:
            lines.setdefault((lr.label, *(getattr(r, f) for f in others)), []).append((lr, r))
        by_figure: dict[tuple[str, str], list[list[tuple[LabelledRun, Any]]]] = {}
        for line in lines.values():
            if len({getattr(r, axis) for _, r in line}) > 1:
                line.sort(key=lambda p: getattr(p[1], axis))
                by_figure.setdefault((line[0][1].model, line[0][1].dtype), []).append(line)
        for (model, dtype), groups in sorted(by_figure.items())[:MAX_FIGURES_PER_KIND]:
            records = [r for g in groups for _, r in g]
            fields = _varying(records, [f for f in ("backend", "device", "kernels", "norm",
                                                    "compile", "batch_size", "prompt_tokens",
                                                    "gen_tokens") if f != axis])  # fmt: skip
            show_run = len({g[0][0].label for g in groups}) > 1
            fig, axes = _new(cols=2)
            for ax, metric, name in ((axes[0], "prefill_tokens_per_s", "Prefill"),
                                     (axes[1], "decode_tokens_per_s", "Decode")):  # fmt: skip
                for g in groups:
                    values, low, high = _errors([r.metrics.get(metric) for _, r in g])
                    label = _series_label(g[0][0], g[0][1], fields, show_run)
                    xs = [getattr(r, axis) for _, r in g]
                    ax.errorbar(xs, values, yerr=[low, high], marker="o", capsize=3, label=label)
                ticks = sorted({getattr(r, axis) for g in groups for _, r in g})
                ax.set_xscale("log", base=2)
                ax.set_xticks(ticks, [str(t) for t in ticks])
                ax.minorticks_off()
                ax.set_xlabel(xlabel)
                ax.set_ylabel("tokens/s")
                ax.set_title(name)
                ax.grid(alpha=0.3)
            if len(groups) > 1:  # one legend for both panels, below them
                handles, names = axes[0].get_legend_handles_labels()
                fig.legend(handles, names, loc="outside lower center", fontsize="small",
                           ncols=min(4, len(names)))  # fmt: skip
            title = f"{model}: throughput against {what} ({dtype}, {_device(records)})"
            fig.suptitle(_title(title, fig))
            figures.append(
                ReportFigure(_name(f"scaling_{axis}", model, dtype), title, fig, "throughput")
            )
    return figures


def roofline_figures(runs: Sequence[LabelledRun]) -> list[ReportFigure]:
    """Achieved decode bandwidth against its roofline, and prefill FLOP/s against the peak."""
    pairs = [
        (lr, r)
        for lr in runs
        for r in lr.run.of(ThroughputRecord)
        if "decode_bandwidth_gb_per_s" in r.metrics
    ]
    figures = []
    groups = _group(pairs, lambda r: (r.dtype, r.backend, r.device))
    for (dtype, _backend, _dev), members in sorted(groups.items())[:MAX_FIGURES_PER_KIND]:
        records = [r for _, r in members]
        fields = _varying(records, ("model", "kernels", "norm", "compile", "shape"))
        labels = [_series_label(lr, r, fields, _several_runs(members)) for lr, r in members]
        fig, (bw, fl) = _new(width=12, height=max(3.5, 0.45 * len(members) + 1.8), cols=2)
        ys = list(range(len(members)))
        achieved = [r.metrics["decode_bandwidth_gb_per_s"].value for r in records]
        roof = [r.roofline.peak_gb_per_s if r.roofline else float("nan") for r in records]
        bw.barh(ys, achieved, color="#1f77b4", label="achieved decode bandwidth")
        bw.scatter(roof, ys, marker="|", s=400, color="black", label="roofline (peak read)")
        for y, r in zip(ys, records, strict=True):  # the share, legible where the bar is not
            pct = r.metrics.get("decode_roofline_pct")
            if pct is not None:
                bw.annotate(f"{pct.value:.1f}%", (r.metrics["decode_bandwidth_gb_per_s"].value, y),
                            xytext=(4, 0), textcoords="offset points", va="center",
                            fontsize="small")  # fmt: skip
        bw.set_yticks(ys, labels)
        bw.set_xlabel("GB/s")
        bw.set_title("Decode: achieved vs peak\nmemory bandwidth")
        bw.legend(fontsize="small", loc="lower right")
        bw.grid(axis="x", alpha=0.3)
        flops = [r.metrics["prefill_flop_per_s"].value if "prefill_flop_per_s" in r.metrics
                 else float("nan") for r in records]  # fmt: skip
        scale, unit = (1e12, "TFLOP/s") if max(flops, default=0) >= 1e12 else (1e9, "GFLOP/s")
        fl.barh(ys, [f / scale for f in flops], color="#2ca02c", label="achieved prefill")
        peaks = [_peak_flops(r) for r in records]
        if any(p is not None for p in peaks):
            fl.scatter([p / scale if p else float("nan") for p in peaks], ys, marker="|", s=400,
                       color="black", label="peak (device's dense FLOP/s)")  # fmt: skip
            fl.set_title("Prefill: achieved vs peak compute")
        else:
            fl.set_title("Prefill: achieved compute\n(the device publishes no peak)")
        fl.set_yticks(ys, [""] * len(ys))
        fl.set_xlabel(unit)
        fl.legend(fontsize="small", loc="lower right")
        fl.grid(axis="x", alpha=0.3)
        title = f"Roofline: achieved vs peak ({dtype}, {_device(records)})"
        fig.suptitle(_title(title, fig))
        figures.append(
            ReportFigure(_name("roofline", dtype, _backend, _dev), title, fig, "throughput")
        )
    return figures


def _peak_flops(r: ThroughputRecord) -> float | None:
    """The device's peak FLOP/s behind the record's MFU (achieved / share)."""
    mfu, achieved = r.metrics.get("prefill_mfu_pct"), r.metrics.get("prefill_flop_per_s")
    if mfu is None or achieved is None or not mfu.value:
        return None
    return achieved.value * 100.0 / mfu.value


def profile_figures(runs: Sequence[LabelledRun]) -> list[ReportFigure]:
    """Stacked shares of each operator category per norm variant and phase, norm first."""
    from elmbench.profile.categories import CATEGORIES

    pairs = [(lr, r) for lr in runs for r in lr.run.of(ProfileRecord)]
    figures = []
    groups = _group(pairs, lambda r: (r.model, r.dtype, r.backend, r.device))
    for (model, dtype, backend, device), members in sorted(groups.items())[:MAX_FIGURES_PER_KIND]:
        members = sorted(members, key=lambda p: (p[1].phase, p[1].norm, p[0].label))
        records = [r for _, r in members]
        fields = ["norm", "phase", *_varying(records, ("kernels", "compile", "shape"))]
        labels = [_series_label(lr, r, fields, _several_runs(members)) for lr, r in members]
        fig, (ax,) = _new(width=11, height=max(3.0, 0.5 * len(members) + 1.8))
        ys = list(range(len(members)))
        left = [0.0] * len(members)
        for category in CATEGORIES:
            shares = [r.category_share(category) or 0.0 for r in records]
            ax.barh(ys, shares, left=left, color=CATEGORY_COLORS.get(category), label=category)
            left = [a + b for a, b in zip(left, shares, strict=True)]
        ax.set_yticks(ys, labels)
        ax.set_xlim(0, 100)
        ax.set_xlabel(f"share of profiled time (%; {records[0].time_basis.replace('_', ' ')})")
        ax.legend(fontsize="small", ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.18))
        title = f"{model}: where the time goes per RMSNorm variant ({dtype}, {_device(records)})"
        ax.set_title(_title(title, fig))
        figures.append(
            ReportFigure(_name("profile", model, dtype, backend, device), title, fig, "profile")
        )
    return figures


def accuracy_figures(runs: Sequence[LabelledRun]) -> list[ReportFigure]:
    """Measured accuracy (standard-error bars) beside the paper's, per task, per suite."""
    pairs = [(lr, r) for lr in runs for r in lr.run.of(AccuracyRecord)]
    figures = []
    groups = _group(pairs, lambda r: (r.suite, r.model, r.dtype, r.backend, r.device))
    for (suite, model, dtype, backend, device), members in sorted(groups.items())[
        :MAX_FIGURES_PER_KIND
    ]:
        records = [r for _, r in members]
        tasks = list(dict.fromkeys(f"{r.label} {r.metric}" for r in records))
        fields = _varying(records, ("norm", "kernels"))
        series: dict[str, list[Estimate | None]] = {}
        paper: list[Estimate | None] = [None] * len(tasks)
        for lr, r in members:
            label = _series_label(lr, r, fields or ["norm"], _several_runs(members))
            row = series.setdefault(label, [None] * len(tasks))
            index = tasks.index(f"{r.label} {r.metric}")
            se = r.stderr_pct or 0.0
            row[index] = Estimate(r.value_pct, "%", (), r.value_pct - se, r.value_pct + se)
            if r.published_pct is not None:
                paper[index] = Estimate.single(r.published_pct, "%")
        if any(p is not None for p in paper):
            series["paper"] = paper
        fig, (ax,) = _new(width=min(12.0, max(8.0, 0.9 * len(tasks) + 3)))
        _bars(ax, tasks, series, "accuracy (%)", "", "task and metric")
        ax.tick_params(axis="x", labelrotation=30)
        ax.legend(fontsize="small")
        title = (
            f"Accuracy vs the paper: {suite}, {model} ({dtype}, {backend}/{device}; "
            "bars: ±1 standard error)"
        )
        ax.set_title(_title(title, fig))
        figures.append(
            ReportFigure(_name("accuracy", suite, model, dtype), title, fig, f"accuracy_{suite}")
        )
    return figures


def layerwise_figure(runs: Sequence[LabelledRun]) -> list[ReportFigure]:
    """Heads and FFN width per layer of each OpenELM model the runs name (from its config)."""
    from elmbench.config import get_config
    from elmbench.errors import ElmbenchError

    names = list(dict.fromkeys(getattr(r, "model", "") for lr in runs for r in lr.run.records))
    configs = []
    for name in names:
        try:
            configs.append(get_config(name))
        except ElmbenchError:  # a comparison model (OLMo, LLaMA): no layer-wise scaling
            continue
    if not configs:
        return []
    fig, (heads, ffn) = _new(cols=2)
    for i, cfg in enumerate(configs):
        color = f"C{i}"
        layers = list(range(cfg.num_layers))
        heads.plot(layers, cfg.num_query_heads, color=color, marker="o", ms=3,
                   label=f"{cfg.name} query heads")  # fmt: skip
        heads.plot(layers, cfg.num_kv_heads, color=color, linestyle="--", marker="s", ms=3,
                   label=f"{cfg.name} KV heads")  # fmt: skip
        ffn.plot(layers, cfg.ffn_dims, color=color, marker="o", ms=3, label=cfg.name)
    heads.set_xlabel("layer")
    heads.set_ylabel("attention heads")
    heads.set_title("Heads per layer")
    ffn.set_xlabel("layer")
    ffn.set_ylabel("FFN width (hidden units)")
    ffn.set_title("FFN width per layer")
    for ax in (heads, ffn):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    title = "Layer-wise scaling of each model (from its config; the same on every device and dtype)"
    fig.suptitle(_title(title, fig))
    return [ReportFigure("layerwise_scaling", title, fig, "models")]


def olmo_figures(runs: Sequence[LabelledRun]) -> list[ReportFigure]:
    """OpenELM beside OLMo-1B in the same run, setting and shape: prefill and decode tokens/s."""
    pairs = [(lr, r) for lr in runs for r in lr.run.of(ThroughputRecord)]
    figures = []
    groups = _group(
        pairs, lambda r: (r.backend, r.device, r.kernels, r.dtype, r.compile, _shape(r))
    )
    for key, members in sorted(groups.items())[:MAX_FIGURES_PER_KIND]:
        models = {r.model for _, r in members}
        if OLMO not in models or len(models) < 2:
            continue
        members = sorted(members, key=lambda p: (p[1].model != OLMO, p[1].model, p[1].norm))
        records = [r for _, r in members]
        labels = list(dict.fromkeys(f"{r.model}\n{r.norm}" for r in records))
        fig, (pre, dec) = _new(cols=2)
        for ax, metric, name in ((pre, "prefill_tokens_per_s", "Prefill"),
                                 (dec, "decode_tokens_per_s", "Decode")):  # fmt: skip
            series: dict[str, list[Estimate | None]] = {}
            for lr, r in members:
                row = series.setdefault(lr.label, [None] * len(labels))
                row[labels.index(f"{r.model}\n{r.norm}")] = r.metrics.get(metric)
            _bars(ax, labels, series, "tokens/s", name, "model and norm")
        backend, device, _kernels, dtype, _compile, shape = key
        title = f"OpenELM vs OLMo: throughput ({dtype}, {_device(records)}, {shape})"
        fig.suptitle(_title(title, fig))
        name = _name("openelm_vs_olmo", dtype, backend, device, shape)
        figures.append(ReportFigure(name, title, fig, "openelm_vs_olmo"))
    return figures


def build_figures(runs: Sequence[LabelledRun]) -> list[ReportFigure]:
    """Every figure the runs have content for."""
    import matplotlib

    matplotlib.use("Agg")  # no display; figures are files and an HTML page
    return [
        *norm_variant_figures(runs),
        *scaling_figures(runs),
        *roofline_figures(runs),
        *olmo_figures(runs),
        *profile_figures(runs),
        *accuracy_figures(runs),
        *layerwise_figure(runs),
    ]
