"""elmbench's accuracy adapter against lm-eval's own `HFLM` around Apple's modeling code.

Both sides score the same lm-eval tasks on the same HF checkpoint, tokenizer, data and batch
size, each run in its own process, interleaved per task (elmbench, HFLM, HFLM, elmbench, ...) so
that drift of the machine hits both alike. Apple's `modeling_openelm.py` and
`configuration_openelm.py` (written for transformers ~4.39) are read from --apple and loaded with
the few text shims listed in `SHIMS` (transformers 5). Before any timing, `check` compares the two
models' logits on real inputs. Usage (see docs/accuracy-speed.md):

    python scripts/bench_vs_hflm.py run --apple DIR --checkpoint DIR \\
        --tokenizer bpe32k.model --data DIR --limit 200 --out reports/accuracy-speed/vs-hflm
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, ClassVar

TASKS = ("arc_challenge", "piqa", "hellaswag", "winogrande")
SIDES = ("elmbench", "hflm")
# (file, old text, new text): the smallest edits that let Apple's code run on transformers 5.
SHIMS = (
    # transformers 5's PretrainedConfig is a dataclass that calls __post_init__(**kwargs) itself.
    ("configuration_openelm.py", "self.__post_init__()", "self._openelm_post_init()"),
    ("configuration_openelm.py", "def __post_init__(self)", "def _openelm_post_init(self)"),
    # ... and no longer keeps `use_cache` unless the subclass stores it.
    ("configuration_openelm.py", "        super().__init__(\n            use_cache=use_cache,",
     "        self.use_cache = use_cache\n        super().__init__(\n"
     "            use_cache=use_cache,"),
    # DynamicCache lost its legacy-tuple converters; the cache itself goes in and out instead.
    ("modeling_openelm.py", "DynamicCache.from_legacy_cache(past_key_values)",
     "(DynamicCache() if past_key_values is None else past_key_values)"),
    ("modeling_openelm.py", "next_decoder_cache.to_legacy_cache()", "next_decoder_cache"),
)  # fmt: skip


# Loading both sides ----------------------------------------------------------------------------


def apple_classes(folder: Path) -> tuple[type, type]:
    """Apple's OpenELMConfig and OpenELMForCausalLM, loaded from `folder` with the shims."""
    modules = {}
    for name in ("configuration_openelm", "modeling_openelm"):
        text = (folder / f"{name}.py").read_text()
        for file, old, new in SHIMS:
            if file == f"{name}.py":
                if old not in text:
                    sys.exit(f"{folder / file}: shim target not found: {old!r}")
                text = text.replace(old, new)
        module = types.ModuleType(name)
        module.__file__ = str(folder / f"{name}.py")
        sys.modules[name] = module  # the modeling file imports `configuration_openelm`
        exec(compile(text, module.__file__, "exec"), module.__dict__)
        modules[name] = module
    config, modeling = modules["configuration_openelm"], modules["modeling_openelm"]
    return config.OpenELMConfig, modeling.OpenELMForCausalLM


def apple_model(apple: Path, checkpoint: Path) -> Any:
    """Apple's model with the checkpoint's weights (strict), fp32, eval mode."""
    import torch
    from safetensors.torch import load_file

    config_class, model_class = apple_classes(apple)
    config = config_class.from_pretrained(str(checkpoint))
    model = model_class(config)  # transformers 5's from_pretrained builds on `meta`: build here
    model.load_state_dict(load_file(str(checkpoint / "model.safetensors")), strict=True)
    return model.to(torch.float32).eval()


def hf_tokenizer(path: Path) -> Any:
    """The SentencePiece model as a transformers tokenizer giving exactly elmbench's ids."""
    import sentencepiece as spm
    import transformers

    class SentencePieceHF(transformers.PreTrainedTokenizer):  # type: ignore[misc]
        vocab_files_names: ClassVar[dict[str, str]] = {}

        def __init__(self, model_file: Path) -> None:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
            super().__init__(bos_token="<s>", eos_token="</s>", unk_token="<unk>")
            self.name_or_path = str(model_file)

        @property
        def vocab_size(self) -> int:
            return int(self.sp.get_piece_size())

        def get_vocab(self) -> dict[str, int]:
            return {self.sp.id_to_piece(i): i for i in range(self.vocab_size)}

        def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
            return list(self.sp.encode(text, out_type=str))

        def _convert_token_to_id(self, token: str) -> int:
            return int(self.sp.piece_to_id(token))

        def _convert_id_to_token(self, index: int) -> str:
            return str(self.sp.id_to_piece(index))

        def encode(self, text: str, add_special_tokens: bool = True, **kwargs: Any) -> list[int]:
            ids = list(self.sp.encode(text))
            return [self.sp.bos_id(), *ids] if add_special_tokens else ids

        def decode(self, ids: Any, skip_special_tokens: bool = False, **kwargs: Any) -> str:
            ids = [ids] if isinstance(ids, int) else [int(i) for i in ids]
            out, run = [], []
            for i in ids:  # control pieces (BOS, EOS) print as "<s>", "</s>" as LLaMA's does
                if self.sp.is_control(i):
                    out.append(self.sp.decode(run))
                    run = []
                    if not skip_special_tokens:
                        out.append(self.sp.id_to_piece(i))
                else:
                    run.append(i)
            return "".join([*out, self.sp.decode(run)])

    return SentencePieceHF(path)


def task_manager(data: Path, tasks: list[str], folder: Path) -> Any:
    """lm-eval's tasks reading the local files (elmbench's overrides of the stock YAMLs)."""
    from lm_eval.tasks import TaskManager

    from elmbench.accuracy.taskdata import write_overrides

    write_overrides(tasks, data, folder)
    return TaskManager(include_path=str(folder), include_defaults=False)


# One side, one task, in its own process --------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """Evaluate one task on one side; write its figures (JSON) and per-request answers."""
    import lm_eval
    import torch

    answers: list[tuple[str, int, int, float, bool]] = []
    counted: dict[str, float] = {"seconds": 0.0, "requests": 0}

    def timed(cls: type) -> type:
        class Timed(cls):  # type: ignore[misc, valid-type]
            def loglikelihood(self, requests: Any, disable_tqdm: bool = False) -> Any:
                start = time.perf_counter()
                out = super().loglikelihood(requests, disable_tqdm)
                counted["seconds"] += time.perf_counter() - start
                counted["requests"] += len(requests)
                for r, (ll, greedy) in zip(requests, out, strict=True):
                    answers.append((r.task_name, r.doc_id, r.idx, float(ll), bool(greedy)))
                return out

        return Timed

    if args.side.startswith("elmbench"):
        from elmbench.accuracy.adapter import ElmLM
        from elmbench.accuracy.tokenizer import load_tokenizer
        from elmbench.backends import ModelSpec, create_backend

        backend = create_backend(
            args.backend, ModelSpec(model=None, weights=str(args.checkpoint), dtype="float32")
        )
        lm = timed(ElmLM)(
            backend,
            load_tokenizer(str(args.tokenizer)),
            batch_size=args.batch_size,
            share_prefix=args.side == "elmbench",
        )
    else:
        from lm_eval.models.huggingface import HFLM

        lm = timed(HFLM)(
            pretrained=apple_model(args.apple, args.checkpoint),
            tokenizer=hf_tokenizer(args.tokenizer),
            backend="causal",
            batch_size=args.batch_size,
            max_length=2048,
            add_bos_token=True,
        )
    with tempfile.TemporaryDirectory() as tmp:
        result = lm_eval.simple_evaluate(
            model=lm,
            tasks=[args.task],
            num_fewshot=0,
            task_manager=task_manager(args.data, [args.task], Path(tmp)),
            limit=args.limit,
            log_samples=False,
            bootstrap_iters=0,
            random_seed=0,
            numpy_random_seed=0,
            torch_random_seed=0,
            fewshot_random_seed=0,
        )
    metrics = {
        k.split(",")[0]: float(v)
        for k, v in result["results"][args.task].items()
        if k.split(",")[0] in ("acc", "acc_norm")
    }
    counters = {
        name: int(getattr(lm, name, 0))
        for name in ("forwards", "input_tokens", "computed_tokens", "padded_tokens")
    }
    figures = {
        "side": args.side,
        "task": args.task,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "requests": int(counted["requests"]),
        "eval_s": counted["seconds"],
        "requests_per_s": counted["requests"] / counted["seconds"],
        "metrics": metrics,
        "threads": torch.get_num_threads(),
        **(counters if args.side.startswith("elmbench") else {}),
        "answers": sorted(answers),
    }
    args.result.write_text(json.dumps(figures) + "\n")


# The numerics check ----------------------------------------------------------------------------


def check(args: argparse.Namespace) -> float:
    """Largest |logit| difference between elmbench and Apple's model on real inputs (fp32)."""
    import torch

    from elmbench.accuracy.tokenizer import load_tokenizer
    from elmbench.backends import ModelSpec, create_backend

    tok = load_tokenizer(str(args.tokenizer))
    lines = (args.data / "arc_challenge" / "test.jsonl").read_text().splitlines()[:4]
    texts = [json.loads(line)["question"] for line in lines]
    ids = [[tok.bos_id, *tok.encode(t)] for t in texts]
    width = min(len(i) for i in ids)
    tokens = torch.tensor([i[:width] for i in ids])
    ours = create_backend(
        "torch", ModelSpec(model=None, weights=str(args.checkpoint), dtype="float32")
    )
    theirs = apple_model(args.apple, args.checkpoint)
    with torch.inference_mode():
        a = ours.model(tokens)
        b = theirs(tokens).logits
    gap = float((a - b).abs().max())
    print(f"check: logits of {tuple(tokens.shape)} real tokens, largest |difference| {gap:.2e}")
    return gap


# The interleaved run ---------------------------------------------------------------------------


def run(args: argparse.Namespace) -> None:
    """ABBA per task, each side in its own process; then the table and the comparison."""
    if not (args.checkpoint / "config.json").is_file():
        make_checkpoint(args.checkpoint)
    gap = check(args)
    if gap > 1e-3:
        sys.exit(f"the two models disagree (largest logit difference {gap:.2e}): not timed")
    args.out.mkdir(parents=True, exist_ok=True)
    order = [args.sides[0], args.sides[1], args.sides[1], args.sides[0]] * (args.rounds // 2)
    env = dict(os.environ)
    if args.backend == "mlx":  # MLX's CPU products on OpenBLAS, as `elmbench accuracy` runs them
        from elmbench.backends import mlx_blas

        env.update(mlx_blas.plan().env())
    started = time.time()
    for task in args.tasks:
        for rep, side in enumerate(order):
            result = args.out / f"{task}.{side}.{rep}.json"
            if result.is_file():
                continue  # resumed
            cmd = [
                sys.executable, __file__, "worker", "--side", side, "--task", task,
                "--apple", str(args.apple), "--checkpoint", str(args.checkpoint),
                "--tokenizer", str(args.tokenizer), "--data", str(args.data),
                "--limit", str(args.limit), "--batch-size", str(args.batch_size),
                "--backend", args.backend, "--result", str(result),
            ]  # fmt: skip
            load = os.getloadavg()[0]
            t0 = time.time()
            subprocess.run(
                cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            figures = json.loads(result.read_text())
            figures.update(
                load_before=load, load_after=os.getloadavg()[0], process_s=time.time() - t0
            )
            result.write_text(json.dumps(figures) + "\n")
            print(
                f"{task:14s} {side:15s} rep {rep}: {figures['requests_per_s']:.2f} requests/s "
                f"({figures['requests']} in {figures['eval_s']:.1f} s; process "
                f"{time.time() - t0:.0f} s, load {load:.2f})",
                flush=True,
            )
    summary = summarize(args)
    summary["wall_s"] = time.time() - started
    summary["check_max_logit_gap"] = gap
    summary["environment"] = environment(started)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.md").write_text(markdown(summary) + "\n")
    print(markdown(summary))


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    """Per task: each side's requests/s (every repetition), the ratio, accuracies, agreement."""
    import numpy as np

    ours, theirs = args.sides
    tasks: dict[str, Any] = {}
    totals = {ours: [0, 0.0], theirs: [0, 0.0]}
    for task in args.tasks:
        runs: dict[str, list[dict[str, Any]]] = {ours: [], theirs: []}
        for path in sorted(args.out.glob(f"{task}.*.json")):
            figures = json.loads(path.read_text())
            if figures["side"] in runs:
                runs[figures["side"]].append(figures)
        a, b = runs[ours][0]["answers"], runs[theirs][0]["answers"]
        if [x[:3] for x in a] != [x[:3] for x in b]:
            sys.exit(f"{task}: the two sides answered different requests")
        gaps = np.abs(np.array([x[3] for x in a]) - np.array([x[3] for x in b]))
        row: dict[str, Any] = {
            "requests": runs[ours][0]["requests"],
            "max_abs_loglikelihood_gap": float(gaps.max()),
            "is_greedy_mismatches": sum(x[4] != y[4] for x, y in zip(a, b, strict=True)),
            "accuracies_identical": runs[ours][0]["metrics"] == runs[theirs][0]["metrics"],
        }
        for side, figures in runs.items():
            rates = [f["requests_per_s"] for f in figures]
            row[side] = {
                "requests_per_s": rates,
                "median_requests_per_s": float(np.median(rates)),
                "metrics": figures[0]["metrics"],
                **{k: figures[0][k] for k in ("forwards", "input_tokens", "computed_tokens",
                                              "padded_tokens") if k in figures[0]},
            }  # fmt: skip
            totals[side][0] += sum(f["requests"] for f in figures)
            totals[side][1] += sum(f["eval_s"] for f in figures)
        row["ratio"] = row[ours]["median_requests_per_s"] / row[theirs]["median_requests_per_s"]
        tasks[task] = row
    overall = {side: n / s for side, (n, s) in totals.items()}
    return {
        "sides": [ours, theirs],
        "limit": args.limit,
        "batch_size": args.batch_size,
        "tasks": tasks,
        "overall_requests_per_s": overall,
        "overall_ratio": overall[ours] / overall[theirs],
    }


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a markdown table."""
    ours, theirs = summary["sides"]
    lines = [
        f"| task | requests | {ours} requests/s | {theirs} requests/s | ratio | computed / input "
        "tokens | max abs Δ log-lik | is_greedy diffs | accuracies equal |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for task, row in summary["tasks"].items():
        a, b = row[ours], row[theirs]
        tokens = (
            f"{a['computed_tokens']:,} / {a['input_tokens']:,}" if "computed_tokens" in a else "-"
        )
        lines.append(
            f"| {task} | {row['requests']:,} | "
            f"{' '.join(f'{r:.2f}' for r in a['requests_per_s'])} | "
            f"{' '.join(f'{r:.2f}' for r in b['requests_per_s'])} | **{row['ratio']:.2f}x** | "
            f"{tokens} | {row['max_abs_loglikelihood_gap']:.1e} | {row['is_greedy_mismatches']} | "
            f"{'yes' if row['accuracies_identical'] else 'NO'} |"
        )
    overall = summary["overall_requests_per_s"]
    lines.append(
        f"| **all** | | {overall[ours]:.2f} | {overall[theirs]:.2f} | "
        f"**{summary['overall_ratio']:.2f}x** | | | | |"
    )
    return "\n".join(lines)


def environment(started: float) -> dict[str, Any]:
    """Versions, the commit, the machine and when: beside the figures, as elmbench's run.json."""
    import platform

    import lm_eval
    import torch
    import transformers

    def git(*cmd: str) -> str:
        where = Path(__file__).parent
        out = subprocess.run(["git", *cmd], cwd=where, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    stamp = "%Y-%m-%dT%H:%M:%SZ"
    return {
        "git_sha": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "started_utc": time.strftime(stamp, time.gmtime(started)),
        "finished_utc": time.strftime(stamp, time.gmtime()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "lm_eval": lm_eval.__version__,
    }


def make_checkpoint(folder: Path) -> None:
    """OpenELM-270M with seeded random weights (seed 0), fp32, in the HF layout."""
    import torch

    from elmbench.checkpoints.hf import save_hf
    from elmbench.checkpoints.torch_load import load_model

    model, _ = load_model("270m", None, "naive", "float32", torch.device("cpu"), 0, True)
    save_hf(model.config, dict(model.state_dict()), folder)
    print(f"wrote {folder}: OpenELM-270M, random weights (seed 0), float32")


def main() -> None:
    """Subcommands: run (the whole comparison), check, worker (one side, one task)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "check", "worker"])
    parser.add_argument("--apple", type=Path, required=True, help="folder of Apple's two files")
    parser.add_argument("--checkpoint", type=Path, required=True, help="HF folder (made if absent)")
    parser.add_argument("--tokenizer", type=Path, required=True, help="SentencePiece .model")
    parser.add_argument("--data", type=Path, required=True, help="make_hellaswag_like.py's folder")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--limit", type=int, default=200, help="documents per task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--backend", default="torch", help="elmbench's backend: torch or mlx")
    parser.add_argument("--sides", default=",".join(SIDES), help="elmbench[-whole],hflm")
    parser.add_argument("--rounds", type=int, default=2, help="runs per side and task (even)")
    parser.add_argument("--out", type=Path, default=Path("reports/accuracy-speed/vs-hflm"))
    parser.add_argument("--side", help="worker: elmbench, elmbench-whole or hflm")
    parser.add_argument("--task", help="worker: one lm-eval task")
    parser.add_argument("--result", type=Path, help="worker: where its JSON goes")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.sides = [s for s in args.sides.split(",") if s]
    for name in ("apple", "checkpoint", "tokenizer", "data"):
        setattr(args, name, getattr(args, name).resolve())
    if args.command == "worker":
        worker(args)
    elif args.command == "check":
        check(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
