"""One sweep run in its own process: ``python -m jaxlm.runner.worker RUN_DIR NAME``.

Reads ``RUN_DIR/config.json`` (written by the sweep), trains and probes, writes ``result.json``.
"""

from __future__ import annotations

import sys

from jaxlm.config import load_config
from jaxlm.runner.sweep import run_one


def main(argv: list[str]) -> int:
    run_dir, name = argv
    run_one(load_config(f"{run_dir}/config.json"), run_dir, name=name, progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
