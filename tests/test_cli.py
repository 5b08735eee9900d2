"""The CLI skeleton: help and version, `models`, `norms`, `env`, output formats, one-line errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from elmbench import __version__
from elmbench.cli import ElmbenchGroup, cli
from elmbench.cli.options import model_option
from elmbench.config import PRESETS
from elmbench.envinfo import NOT_INSTALLED, gather, package_version
from elmbench.norms import NORMS, Availability, NormVariant
from elmbench.norms.torch_norms import APEX_HINT, apex_available

PUBLISHED = {  # reference/OPENELM.md §1.1: params (HF, tied), RMSNorms per forward, KV bytes/token
    "270m": (271_527_168, 65, 16_128),
    "450m": (457_179_136, 81, 23_296),
    "1_1b": (1_079_891_456, 113, 43_264),
    "3b": (3_036_647_424, 145, 83_968),
}
HEAVY = ("torch", "mlx", "lm_eval", "pandas", "matplotlib")


def run(*args: str, columns: int = 100) -> Result:
    """Invoke the CLI as a user would, in a terminal `columns` wide."""
    return CliRunner().invoke(cli, list(args), env={"COLUMNS": str(columns)}, prog_name="elmbench")


def ok(*args: str, columns: int = 100) -> Result:
    """Invoke and require success."""
    result = run(*args, columns=columns)
    assert result.exit_code == 0, result.output
    return result


def assert_one_line_error(result: Result, *needles: str) -> None:
    """A user mistake: exit 2, nothing on stdout, one `error:` line on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0]


# Group, help, version ------------------------------------------------------------------------


def test_version() -> None:
    assert ok("--version").stdout.strip() == f"elmbench, version {__version__}"


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_of_the_group_and_every_command(flag: str) -> None:
    top = ok(flag).stdout
    assert {"models", "norms", "env"} <= set(cli.commands)
    for name, command in cli.commands.items():
        assert name in top
        text = ok(name, flag).stdout
        assert f"Usage: elmbench {name}" in text
        first_line = (command.help or "").splitlines()[0]
        assert first_line in text  # the docstring is the help


def test_help_imports_no_heavy_package() -> None:
    code = (
        "import sys\n"
        "from elmbench.cli import cli\n"
        "for args in (['--help'], *[[c, '--help'] for c in cli.commands]):\n"
        "    try:\n"
        "        cli.main(args, prog_name='elmbench')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (args, e.code)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "Usage: elmbench models" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_python_m_elmbench_turns_an_error_into_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "elmbench", "models", "270n"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: unknown model '270n'")
    assert "Traceback" not in out.stderr


def test_errors_raised_by_shared_options_are_one_line() -> None:
    group = ElmbenchGroup("g")

    @group.command()
    @model_option()
    def show(model: str) -> None:
        click.echo(model)

    runner = CliRunner()
    assert runner.invoke(group, ["show", "--model", "OpenELM-3B"]).stdout == "3b\n"
    assert_one_line_error(runner.invoke(group, ["show", "--model", "3bb"]), "Did you mean '3b'")


# models --------------------------------------------------------------------------------------


def test_models_table_has_every_preset_and_published_counts() -> None:
    out = ok("models").stdout
    for name, cfg in PRESETS.items():
        assert name in out and cfg.official_name in out
    for params, _, kv_bytes in PUBLISHED.values():
        assert f"{params:,}" in out and f"{kv_bytes:,}" in out
    # Fits a 100-column terminal: no cell is folded (the longest official name stays whole).
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 100
    assert "OpenELM-270M-Instruct" in out


def test_models_json_values() -> None:
    rows = {r["name"]: r for r in json.loads(ok("models", "--format", "json").stdout)}
    assert list(rows) == list(PRESETS)
    for name, (params, norms, kv_bytes) in PUBLISHED.items():
        for key in (name, f"{name}-instruct"):
            assert rows[key]["params"] == params
            assert rows[key]["norms_per_forward"] == norms
            assert rows[key]["kv_cache_bytes_per_token_bf16"] == kv_bytes
    r = rows["1_1b"]
    assert (r["query_heads_first"], r["query_heads_last"]) == (16, 32)
    assert (r["kv_heads_first"], r["kv_heads_last"]) == (4, 8)
    assert (r["ffn_dim_min"], r["ffn_dim_max"]) == (1024, 8192)
    assert (r["layers"], r["model_dim"], r["head_dim"]) == (28, 2048, 64)
    assert rows["3b-instruct"]["official_name"] == "OpenELM-3B-Instruct"


def test_one_model_per_layer_table() -> None:
    out = ok("models", "1_1b").stdout
    lines = [line.split() for line in out.splitlines()]
    # Rows are the lines whose first cell is a layer index: 0..27, in order.
    layer_rows = [cells for cells in lines if cells and cells[0].isdigit()]
    assert [int(cells[0]) for cells in layer_rows] == list(range(28))
    # layer, query heads, KV heads, qkv_proj, out_proj, FFN width, proj_1, proj_2, params
    assert layer_rows[0] == [
        "0",
        "16",
        "4",
        "1536×2048",
        "2048×1024",
        "1024",
        "2048×2048",
        "2048×1024",
        "11,538,560",
    ]
    assert layer_rows[-1][:3] == ["27", "32", "8"] and layer_rows[-1][5] == "8192"
    assert layer_rows[-1][8] == f"{PRESETS['1_1b'].layer_params(27):,}"
    assert "1,079,891,456 parameters" in out and "113 RMSNorms" in out and "43,264" in out


def test_one_model_json() -> None:
    data = json.loads(ok("models", "1_1b", "--format", "json").stdout)
    assert data["model"]["params"] == 1_079_891_456
    layers = data["layers"]
    assert len(layers) == 28
    first, last = layers[0], layers[-1]
    assert (first["query_heads"], first["kv_heads"], first["ffn_dim"]) == (16, 4, 1024)
    assert (last["query_heads"], last["kv_heads"], last["ffn_dim"]) == (32, 8, 8192)
    assert last["qkv_proj_shape"] == [(32 + 2 * 8) * 64, 2048]
    assert last["proj_1_shape"] == [2 * 8192, 2048] and last["proj_2_shape"] == [2048, 8192]
    assert sum(r["params"] for r in layers) + 32000 * 2048 + 2048 == 1_079_891_456


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("1_1b", "1_1b"),
        ("OpenELM-1_1B", "1_1b"),
        ("openelm-1_1b", "1_1b"),
        ("apple/OpenELM-1_1B-Instruct", "1_1b-instruct"),
        ("APPLE/OPENELM-270M", "270m"),
        ("3B", "3b"),
    ],
)
def test_model_aliases(alias: str, name: str) -> None:
    data = json.loads(ok("models", alias, "--format", "json").stdout)
    assert data["model"]["name"] == name
    assert len(data["layers"]) == PRESETS[name].num_layers


def test_plain_text_formats_have_no_rich_boxes() -> None:
    rows = list(csv.DictReader(io.StringIO(ok("models", "--format", "csv").stdout)))
    assert [r["name"] for r in rows] == list(PRESETS)
    assert rows[0]["params"] == "271527168"
    layer_csv = list(csv.DictReader(io.StringIO(ok("models", "tiny", "--format", "csv").stdout)))
    assert layer_csv[0]["qkv_proj_shape"] == "64x64" and len(layer_csv) == 3
    md = ok("models", "--format", "markdown").stdout
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(PRESETS)
    assert "| 270m | OpenELM-270M |" in md and "271,527,168" in md
    for text in (md, ok("models", "--format", "csv").stdout):
        assert "─" not in text and "[bold]" not in text


@pytest.mark.parametrize(
    ("name", "suggestion"), [("270n", "Did you mean '270m'"), ("1_1v", "Did you mean '1_1b'")]
)
def test_unknown_model_suggests(name: str, suggestion: str) -> None:
    assert_one_line_error(run("models", name), f"unknown model '{name}'", suggestion)


def test_unknown_model_without_close_match_lists_the_valid_names() -> None:
    assert_one_line_error(run("models", "1b1"), "unknown model '1b1'", "1_1b", "270m", "tiny")


# norms ---------------------------------------------------------------------------------------


def test_norms_table_lists_variants_and_why_not() -> None:
    out = ok("norms").stdout
    for name in ("naive", "fused", "compiled", "apex", "layernorm"):
        assert name in out
    assert "(ablation: changes" in out  # the layernorm label, possibly wrapped
    if not apex_available().ok:
        assert "NVIDIA apex is not installed" in out or "not here:" in out
        assert "fused_layer_norm_cuda" in out and "pip install apex" in out


def test_norms_json_matches_the_registry() -> None:
    rows = json.loads(ok("norms", "--format", "json").stdout)
    expected = [(b, n) for b, table in NORMS.items() for n in table]
    assert [(r["backend"], r["name"]) for r in rows] == expected
    by_name = {r["name"]: r for r in rows if r["backend"] == "torch"}
    assert by_name["naive"]["available"] is True
    assert by_name["layernorm"]["changes_numerics"] is True
    assert "changes numerics" in by_name["layernorm"]["label"]
    apex = by_name["apex"]
    assert apex["available"] is apex_available().ok
    if not apex["available"]:
        assert apex["hint"] == APEX_HINT and apex["reason"]


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_norms_backend_filter(backend: str) -> None:
    rows = json.loads(ok("norms", "--backend", backend, "--format", "json").stdout)
    assert {r["backend"] for r in rows} <= {backend}
    assert len(rows) == len(NORMS[backend])


class _Unavailable(NormVariant):
    def available(self) -> Availability:
        return Availability(False, "needs [bold]Metal[/bold]", "pip install 'mlx[cpu]'")


class _Broken(NormVariant):
    def available(self) -> Availability:
        raise RuntimeError("driver exploded")


def test_norms_survive_a_broken_check_and_print_brackets_verbatim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = dict(NORMS["torch"])
    table["odd"] = _Unavailable("odd", "torch", "x:y", "x:y", "an odd variant")
    table["broken"] = _Broken("broken", "torch", "x:y", "x:y", "a broken variant")
    monkeypatch.setitem(NORMS, "torch", table)
    out = ok("norms", "--backend", "torch", columns=200).stdout
    assert "pip install 'mlx[cpu]'" in out and "needs [bold]Metal[/bold]" in out
    assert "availability check failed: RuntimeError: driver exploded" in out
    rows = {r["name"]: r for r in json.loads(ok("norms", "--format", "json").stdout)}
    assert rows["broken"]["available"] is False and rows["naive"]["available"] is True


# env -----------------------------------------------------------------------------------------


def test_env_json() -> None:
    import torch

    info = json.loads(ok("env", "--format", "json").stdout)
    assert set(info) == {"python", "platform", "packages", "cpu", "cuda", "apple", "mlx", "can_run"}
    assert info["packages"]["torch"] == torch.__version__
    assert info["packages"]["elmbench"] == __version__
    assert set(info["packages"]) >= {"mlx", "mlx-lm", "lm-eval", "transformers", "apex"}
    if not apex_available().ok:
        assert info["packages"]["apex"] == NOT_INSTALLED or "unusable" in info["packages"]["apex"]
    assert info["python"]["executable"] == sys.executable
    assert info["cpu"]["logical_cores"] >= 1
    assert info["cuda"]["available"] is torch.cuda.is_available()
    assert len(info["cuda"]["devices"]) == (
        torch.cuda.device_count() if torch.cuda.is_available() else 0
    )
    assert "cpu" in info["can_run"]["backends"]["torch"]
    assert "naive" in info["can_run"]["norms"]["torch"]
    if info["mlx"]["installed"]:
        import mlx.core as mx

        assert info["mlx"]["default_device"] == str(mx.default_device())
        assert "cpu" in info["can_run"]["backends"]["mlx"]


def test_env_table_and_csv() -> None:
    out = ok("env").stdout
    for word in ("python", "packages", "torch", "can_run", "backends.torch", "memory_total_bytes"):
        assert word in out
    assert "GiB" in out
    rows = list(csv.DictReader(io.StringIO(ok("env", "--format", "csv").stdout)))
    assert {"section", "item", "value"} == set(rows[0])
    assert any(r["section"] == "packages" and r["item"] == "torch" for r in rows)


def test_env_probes_report_missing_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import x` raise ImportError, as if x were not installed.
    for name in ("torch", "mlx", "mlx.core"):
        monkeypatch.setitem(sys.modules, name, None)
    info = gather()
    assert info["mlx"]["installed"] is False and info["can_run"]["backends"]["mlx"] == []
    assert info["cuda"]["available"] is False and NOT_INSTALLED in info["cuda"]["reason"]
    assert info["apple"]["mps_available"] is False
    assert package_version("no-such-distribution-elmbench") == NOT_INSTALLED


# One option, one form, in every run command ----------------------------------------------------

RUN_COMMANDS = ("throughput", "profile", "accuracy")
SHARED = (
    "suite", "model", "weights", "device", "backend", "kernels", "norm", "dtype", "seed",
    "quantize", "group_size", "out", "resume", "retry_failed", "report", "quiet", "fmt",
)  # fmt: skip


@pytest.mark.parametrize("name", SHARED)
def test_run_commands_share_each_options_name_flags_and_value_form(name: str) -> None:
    forms = set()
    for command in RUN_COMMANDS:
        (option,) = [p for p in cli.commands[command].params if p.name == name]
        forms.add((tuple(option.opts), tuple(option.secondary_opts), option.multiple,
                   option.metavar, option.is_flag, option.type.name))  # fmt: skip
    assert len(forms) == 1, forms


@pytest.mark.parametrize("command", RUN_COMMANDS)
def test_list_options_take_commas_and_repeats_alike(command: str) -> None:
    from elmbench.cli.run_options import split

    params = {p.name: p for p in cli.commands[command].params}
    for name in ("model", "norm", "dtype", "kernels"):
        assert params[name].multiple
    assert split(("270m,450m", "1_1b")) == ["270m", "450m", "1_1b"]


def test_distinct_meanings_have_distinct_names() -> None:
    throughput = {p.name for p in cli.commands["throughput"].params}
    accuracy = {p.name for p in cli.commands["accuracy"].params}
    assert "batch_size" in throughput and "batch_size" not in accuracy  # generation batch
    assert "eval_batch_size" in accuracy  # scoring batch
    assert "min_seconds" not in {p.name for p in cli.commands["profile"].params}


def test_the_group_lists_commands_in_the_order_a_user_needs_them() -> None:
    top = ok("--help").stdout
    order = ["throughput", "profile", "accuracy", "models", "devices", "norms", "suites", "env"]
    at = [top.index(f"  {name} ") for name in order]
    assert at == sorted(at)


def test_devices_lists_profiles_and_says_which_are_here() -> None:
    rows = json.loads(ok("devices", "--format", "json").stdout)
    by = {r["name"]: r for r in rows}
    assert by["h100"]["bandwidth_gb_per_s"] == 3350 and by["h100"]["present"] == "no"
    assert by["cpu"]["present"] == "yes" and by["cpu"]["bandwidth_gb_per_s"] is None
    assert {"m2max", "h200", "a100", "rtx4090"} <= set(by)


def test_usage_errors_are_one_line_too() -> None:
    result = CliRunner().invoke(cli, ["throughput", "--nosuch"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: No such option")
    assert len(result.stderr.splitlines()) == 1


def test_a_run_ends_with_its_report_command_or_the_report_itself(tmp_path: Path) -> None:
    args = ["throughput", "-m", "tiny", "--device", "cpu", "--backend", "torch", "--norm",
            "naive", "-p", "8", "-n", "3", "--warmup", "0", "--repetitions", "1",
            "--min-seconds", "0", "--out", str(tmp_path), "-q"]  # fmt: skip
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    (run,) = tmp_path.iterdir()
    assert f"report: elmbench report {run}" in first.stderr
    assert not (run / "report.html").exists()
    second = CliRunner().invoke(cli, [*args, "--report"])
    assert second.exit_code == 0, second.output
    (made,) = [p for p in tmp_path.iterdir() if p != run]
    assert (made / "report.html").is_file() and (made / "summary.md").is_file()
