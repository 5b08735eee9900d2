"""`elmbench report`: golden markdown from record fixtures, figures checked object by object, the
HTML page self-contained, runs from two machines side by side, bad input refused in one line."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from elmbench.cli import cli
from elmbench.records import read_run
from elmbench.report import make_report
from elmbench.report.figures import build_figures
from elmbench.report.tables import build_tables, label_runs

DATA = Path(__file__).parent / "data" / "report"
GOLDEN = DATA / "golden"
ALL = ("throughput", "throughput-second-machine", "olmo", "norms", "profile", "accuracy",
       "accuracy-270m")  # fmt: skip
UPDATE = os.environ.get("ELMBENCH_UPDATE_GOLDEN") == "1"  # rewrite the golden files


def runs(*names: str) -> list[Path]:
    return [DATA / name for name in names]


def check_golden(text: str, name: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; ELMBENCH_UPDATE_GOLDEN=1 rewrites it"


def test_one_throughput_run_golden_markdown(tmp_path: Path) -> None:
    result = make_report(runs("throughput"), tmp_path, formats=("md",), plots=False)
    check_golden((tmp_path / "summary.md").read_text(), "throughput.md")
    assert result.tables == ["runs", "throughput"]
    assert not result.figures and not (tmp_path / "figures").exists()


def test_every_kind_from_two_machines_golden_markdown(tmp_path: Path) -> None:
    result = make_report(runs(*ALL), tmp_path, formats=("md",), plots=False)
    text = (tmp_path / "summary.md").read_text()
    check_golden(text, "all.md")
    assert result.tables == ["runs", "throughput", "openelm_vs_olmo", "norm_bench", "profile",
                             "accuracy_zero_shot", "failures"]  # fmt: skip
    # the two machines' rows sit side by side, labelled, never averaged into one row
    rows = [line.split("|")[1:5] for line in text.splitlines() if "| 1×16+8 " in line]
    cells = [[c.strip() for c in row] for row in rows]
    assert cells[:4] == [
        ["R1", "tiny", "naive", "1×16+8"], ["R1", "tiny", "fused", "1×16+8"],
        ["R2", "tiny", "naive", "1×16+8"], ["R2", "tiny", "fused", "1×16+8"],
    ]  # fmt: skip
    assert "ci-runner (Intel Xeon, 4 cores)" in text


def test_tables_keep_numbers_for_csv_and_the_intervals_of_the_records() -> None:
    labelled = label_runs([read_run(p) for p in runs("throughput")])
    table = next(t for t in build_tables(labelled) if t.name == "throughput")
    record = next(r for r in labelled[0].run.records if getattr(r, "norm", "") == "naive")
    row = table.frame[(table.frame.norm == "naive") & (table.frame.prompt_tokens == 16)
                      & (table.frame.batch_size == 1)].iloc[0]  # fmt: skip
    assert record.prompt_tokens == 16 and record.batch_size == 1
    decode = record.metrics["decode_tokens_per_s"]
    assert (row.decode_tokens_per_s, row.decode_ci_low, row.decode_ci_high) == (
        decode.value,
        decode.ci_low,
        decode.ci_high,
    )
    assert table.common["dtype"] == "float32" and "dtype" not in table.shown.columns


def figures_by_name(*names: str) -> dict[str, object]:
    labelled = label_runs([read_run(p) for p in runs(*names)])
    return {f.name: f for f in build_figures(labelled)}


def test_figures_have_titles_axes_units_and_the_records_intervals() -> None:
    figures = figures_by_name("throughput", "throughput-second-machine")
    assert set(figures) == {
        "norm_variants_tiny_float32_b1-p16-8", "norm_variants_tiny_float32_b1-p32-8",
        "norm_variants_tiny_float32_b2-p16-8", "norm_variants_tiny_float32_b2-p32-8",
        "scaling_prompt_tokens_tiny_float32", "scaling_batch_size_tiny_float32",
        "roofline_float32_torch_cpu", "layerwise_scaling",
    }  # fmt: skip
    norm = figures["norm_variants_tiny_float32_b1-p16-8"]
    assert "float32" in norm.title and "torch/cpu on AMD EPYC" in norm.title
    assert "torch/cpu on Intel Xeon" in norm.title
    _, decode = norm.figure.axes
    assert decode.get_ylabel() == "tokens/s" and decode.get_xlabel() == "RMSNorm variant"
    assert [t.get_text() for t in decode.get_xticklabels()] == ["naive", "fused"]
    assert [t.get_text() for t in decode.get_legend().get_texts()] == ["R1", "R2"]
    from matplotlib.container import BarContainer, ErrorbarContainer

    bars = [c for c in decode.containers if isinstance(c, BarContainer)]
    errors = [c for c in decode.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(errors) == 2  # one series per machine, each with its intervals
    run = read_run(DATA / "throughput")
    naive = next(r for r in run.records if r.norm == "naive" and r.prompt_tokens == 16
                 and r.batch_size == 1)  # fmt: skip
    assert bars[0].datavalues[0] == pytest.approx(naive.metrics["decode_tokens_per_s"].value)
    segment = errors[0].lines[2][0].get_segments()[0]  # R1's naive bar: its interval
    est = naive.metrics["decode_tokens_per_s"]
    assert (segment[0][1], segment[1][1]) == pytest.approx((est.ci_low, est.ci_high))
    scaling = figures["scaling_prompt_tokens_tiny_float32"]
    axis = scaling.figure.axes[0]
    assert axis.get_xlabel() == "prompt length (tokens)" and len(axis.lines) >= 8
    assert [t.get_text() for t in axis.get_xticklabels()] == ["16", "32"]
    roof = figures["roofline_float32_torch_cpu"].figure.axes
    assert roof[0].get_xlabel() == "GB/s" and roof[1].get_xlabel() == "GFLOP/s"
    assert "no peak" in roof[1].get_title()


def test_profile_accuracy_olmo_and_layerwise_figures() -> None:
    figures = figures_by_name("profile", "accuracy-270m", "olmo")
    profile = figures["profile_tiny_float32_torch_cpu"]
    (ax,) = profile.figure.axes
    assert ax.get_legend().get_texts()[0].get_text() == "norm"  # norm first
    assert ax.get_xlabel().startswith("share of profiled time (%")
    assert len(ax.containers) == 8  # one stacked series per category
    accuracy = figures["accuracy_zero_shot_270m_float32"]
    (ax,) = accuracy.figure.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["norm naive", "paper"]
    assert ax.get_ylabel() == "accuracy (%)" and "270m" in accuracy.title
    olmo = figures["openelm_vs_olmo_float32_torch_cpu_b1-p128-32"]
    ticks = [t.get_text() for t in olmo.figure.axes[1].get_xticklabels()]
    assert ticks == ["olmo-1b\nnative", "1_1b\nfused", "1_1b\nnaive"]
    layers = figures["layerwise_scaling"].figure.axes
    assert layers[0].get_ylabel() == "attention heads"
    assert layers[1].get_ylabel() == "FFN width (hidden units)"
    labels = [t.get_text() for t in layers[1].get_legend().get_texts()]
    assert labels == ["1_1b", "tiny", "270m"] or set(labels) == {"1_1b", "tiny", "270m"}
    widths = next(line for line in layers[1].lines if line.get_label() == "270m").get_ydata()
    from elmbench.config import get_config

    assert list(widths) == list(get_config("270m").ffn_dims)


def test_only_what_the_runs_contain(tmp_path: Path) -> None:
    figures = figures_by_name("profile")
    assert set(figures) == {"profile_tiny_float32_torch_cpu", "layerwise_scaling"}
    result = make_report(runs("norms"), tmp_path, formats=("md",), plots=True)
    assert result.tables == ["runs", "norm_bench"] and result.figures == ["layerwise_scaling"]


def test_all_formats_and_a_self_contained_page(tmp_path: Path) -> None:
    result = make_report(runs("throughput", "profile"), tmp_path,
                         formats=("md", "csv", "html", "json"))  # fmt: skip
    names = {p.relative_to(tmp_path).as_posix() for p in result.files}
    assert {"summary.md", "report.html", "report.json", "tables/throughput.csv",
            "tables/profile.csv", "tables/runs.csv"} <= names  # fmt: skip
    assert "figures/profile_tiny_float32_torch_cpu.png" in names
    assert "figures/profile_tiny_float32_torch_cpu.svg" in names
    page = (tmp_path / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(result.figures)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    import pandas as pd

    csv = pd.read_csv(tmp_path / "tables" / "throughput.csv")
    assert csv["decode_tokens_per_s"].dtype.kind == "f" and len(csv) == 8
    data = json.loads((tmp_path / "report.json").read_text())
    assert len(data["tables"]["throughput"]) == 8 and data["runs"][0]["label"] == "R1"
    assert (tmp_path / "figures" / "roofline_float32_torch_cpu.png").read_bytes()[:4] == (
        b"\x89PNG"
    )


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_cli_defaults_to_the_first_runs_folder_and_prints_a_summary(tmp_path: Path) -> None:
    run = shutil.copytree(DATA / "throughput", tmp_path / "run")
    code, out, err = invoke("report", str(run), "--no-plots", "--format", "csv")
    assert code == 0, err
    assert out.startswith("report of 1 run(s): 20261207-204609-throughput-f7d0eb3 (8 throughput)")
    assert "fastest decode: tiny torch/cpu stock naive float32 none" in out
    assert (run / "tables" / "throughput.csv").exists() and not (run / "summary.md").exists()
    (run / "summary.md").write_text("# my own notes\n")  # a summary someone wrote by hand
    code, _, err = invoke("report", str(run), "--no-plots")
    assert code == 2 and "was not written by elmbench report" in err
    assert (run / "summary.md").read_text() == "# my own notes\n"


def test_an_unknown_schema_version_is_refused_with_one_line(tmp_path: Path) -> None:
    run = shutil.copytree(DATA / "profile", tmp_path / "run")
    meta = json.loads((run / "run.json").read_text())
    meta["schema_version"] = 3
    (run / "run.json").write_text(json.dumps(meta))
    code, out, err = invoke("report", str(run), "--out", str(tmp_path / "out"))
    assert code == 2 and not out
    assert len(err.strip().splitlines()) == 1 and "schema_version 3 is not supported" in err
    code, _, err = invoke("report", str(tmp_path / "nowhere"))
    assert code == 2 and "no such run folder" in err


@pytest.mark.slow
def test_a_real_run_reports_and_compares_with_itself(tmp_path: Path) -> None:
    from elmbench.suites import SuiteSpec
    from elmbench.throughput.run import run_spec

    spec = SuiteSpec(name="t", models=("tiny",), device="cpu", backend="torch",
                     norms=("naive", "fused"), prompt_tokens=(8,), gen_tokens=(4,), warmup=0,
                     repetitions=3, min_seconds=0.0, order="interleaved")  # fmt: skip
    run = run_spec(spec, out=tmp_path).path
    code, out, err = invoke("report", str(run))
    assert code == 0, err
    assert (run / "report.html").exists() and (run / "figures").is_dir()
    code, out, _ = invoke("compare", str(run), str(run))
    assert code == 0 and "4 no significant change" in out and "not interleaved" not in out


def test_variants_are_shown_against_naive_paired_by_round_when_interleaved(
    tmp_path: Path,
) -> None:
    from recordkit import throughput, write_run

    drift = [700.0, 350.0, 690.0, 360.0, 710.0, 340.0, 705.0, 355.0]  # the machine halves
    fused = [0.9 * v for v in drift]  # 10% slower in every round
    tables = {}
    for order in ("interleaved", "sequential"):
        records = [throughput("naive", drift, order=order), throughput("fused", fused, order=order)]
        run = read_run(write_run(tmp_path / order, records))
        tables[order] = next(t for t in build_tables(label_runs([run])) if t.name == "throughput")
    paired = tables["interleaved"].frame.set_index("norm")
    assert paired.loc["fused", "decode_vs_reference"] == pytest.approx(0.9)
    assert paired.loc["fused", "decode_vs_reference_ci_low"] == pytest.approx(0.9)
    assert paired.loc["fused", "decode_vs_reference_ci_high"] == pytest.approx(0.9)
    assert paired.loc["naive", "reference_norm"] == "naive"
    assert list(tables["interleaved"].shown["decode vs"]) == ["reference", "0.90x [0.90, 0.90]"]
    unpaired = tables["sequential"].frame.set_index("norm")
    low, high = (unpaired.loc["fused", f"decode_vs_reference_ci_{k}"] for k in ("low", "high"))
    assert low < 0.6 and high > 1.2  # the drift swamps a ratio of medians
