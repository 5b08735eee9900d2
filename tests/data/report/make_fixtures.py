"""Write the synthetic run folders of tests/data/report (see its README); run from the repo root:
`PYTHONPATH=.:tests python tests/data/report/make_fixtures.py`."""

from __future__ import annotations

import shutil
from pathlib import Path

from recordkit import freeze, olmo_records, paper_accuracy_records, second_machine, write_run

HERE = Path(__file__).parent


def main() -> None:
    """Rewrite olmo/, accuracy-270m/ and throughput-second-machine/."""
    for name in ("olmo", "accuracy-270m", "throughput-second-machine"):
        shutil.rmtree(HERE / name, ignore_errors=True)
    freeze(write_run(HERE / "olmo", olmo_records(), membw=30.0))
    freeze(write_run(HERE / "accuracy-270m", paper_accuracy_records(), kind="accuracy"))
    second_machine(HERE / "throughput", HERE / "throughput-second-machine")


if __name__ == "__main__":
    main()
