"""Write a HellaSwag-shaped task file from BoolQ passages: HellaSwag's validation set is not here.

The benchmark data folder OUT gets links to ARC-Challenge, PIQA and WinoGrande in DATA and a
`hellaswag/validation.jsonl` in HellaSwag's own fields (activity_label, ctx_a, ctx_b, endings,
label), read by lm-eval's stock `hellaswag` task. Each document: a passage's title as the activity,
its first ~40 words as ctx_a, the next 5 words as ctx_b, and four endings of 14-30 words: the
passage's own next words and three spans of other passages (seeded). Only the shape matters: the
weights are random. Usage:

    python scripts/make_hellaswag_like.py /work/shared/evaldata OUT [--docs 1000]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

LINKED = ("arc_challenge", "piqa", "winogrande")


def documents(passages: list[str], count: int, seed: int = 0) -> list[dict[str, object]]:
    """`count` HellaSwag-shaped documents from passages of at least 80 words."""
    rng = random.Random(seed)
    usable = [p for p in passages if len(p.split(" -- ", 1)[-1].split()) >= 80]
    docs: list[dict[str, object]] = []
    for ind, passage in enumerate(usable[:count]):
        title, _, body = passage.partition(" -- ")
        words = body.split()
        a = rng.randint(30, 50)
        ctx_a, ctx_b = " ".join(words[:a]), " ".join(words[a : a + 5])
        endings = [" ".join(words[a + 5 : a + 5 + rng.randint(14, 30)])]
        while len(endings) < 4:
            other = rng.choice(usable).partition(" -- ")[2].split()
            start = rng.randint(0, max(0, len(other) - 31))
            endings.append(" ".join(other[start : start + rng.randint(14, 30)]))
        label = rng.randrange(4)
        endings[0], endings[label] = endings[label], endings[0]
        docs.append(
            {
                "ind": ind,
                "activity_label": title,
                "ctx_a": ctx_a,
                "ctx_b": ctx_b,
                "ctx": f"{ctx_a} {ctx_b}",
                "endings": endings,
                "source_id": f"boolq-{ind}",
                "split": "val",
                "split_type": "indomain",
                "label": str(label),
            }
        )
    return docs


def main() -> None:
    """Link the shipped tasks and write the HellaSwag-shaped one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a folder laid out like shared/evaldata")
    parser.add_argument("out", type=Path, help="the benchmark data folder to write")
    parser.add_argument("--docs", type=int, default=1000)
    args = parser.parse_args()
    data, out = args.data.resolve(), args.out
    out.mkdir(parents=True, exist_ok=True)
    for task in LINKED:
        link = out / task
        if not link.exists():
            link.symlink_to(data / task, target_is_directory=True)
    lines = (data / "boolq" / "validation.jsonl").read_text().splitlines()
    passages = [json.loads(line)["passage"] for line in lines if line.strip()]
    docs = documents(passages, args.docs)
    (out / "hellaswag").mkdir(exist_ok=True)
    with (out / "hellaswag" / "validation.jsonl").open("w") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")
    print(f"{out}: {', '.join(LINKED)} linked; hellaswag: {len(docs)} documents")


if __name__ == "__main__":
    main()
