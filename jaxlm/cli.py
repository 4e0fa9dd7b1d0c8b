"""The ``jaxlm`` command: ``train``, ``probe``, ``sweep``, ``report``, ``convert``. Thin: it
parses, then calls the library."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Sequence

import jaxlm
from jaxlm.config import ConfigError
from jaxlm.models.hf_config import PretrainedError


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE",
                        help="override config keys, e.g. --set model.d_model=128 train.steps=500")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxlm", description=jaxlm.__doc__)
    parser.add_argument("--version", action="version", version=f"jaxlm {jaxlm.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train the base config of an experiment file, then probe it")
    p.add_argument("config", help="experiment file, e.g. experiments/quickstart.py")
    p.add_argument("--run-dir", help="where to write the run (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--init-from", metavar="PATH",
                   help="fine-tune a local Hugging Face checkpoint (its model replaces model.*)")
    _add_overrides(p)

    p = sub.add_parser("probe", help="probe a trained run (optionally on a changed task), or a "
                                     "pretrained checkpoint with --pretrained")
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--pretrained", metavar="PATH",
                   help="a local Hugging Face folder: text bits per byte, passkey retrieval, "
                        "associative recall with and without just-read-twice")
    p.add_argument("--text", help="--pretrained: a text file or folder whose test split is "
                                  "scored (default: the built-in corpus)")
    p.add_argument("--lengths", default="256,512,1024",
                   help="--pretrained: passkey context lengths in tokens (default 256,512,1024)")
    p.add_argument("--trials", type=int, default=5, help="--pretrained: prompts per probe")
    p.add_argument("--context", type=int, default=512,
                   help="--pretrained: tokens per window of the text probe (default 512)")
    _add_overrides(p)

    p = sub.add_parser("convert", help="Hugging Face folder <-> jaxlm run directory")
    p.add_argument("path", help="a local Hugging Face folder or a jaxlm run directory")
    p.add_argument("--to", required=True, metavar="DIR", help="where to write the other one")

    p = sub.add_parser("sweep", help="run every point of an experiment's sweep and tabulate")
    p.add_argument("config", help="experiment file defining config() and sweep()")
    p.add_argument("--out", help="output directory (default runs/<name>)")
    p.add_argument("--preset", help="a named preset of the experiment file's PRESETS, e.g. "
                                    "full (the paper's sizes, for accelerators)")
    p.add_argument("--seeds", type=int, default=1,
                   help="run every point with this many seeds (train.seed, train.seed+1, ...); "
                        "the table then gives the mean and range over seeds (default 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="runs at once, each in its own process (default 1); helps on machines "
                        "with many cores, not on 2")
    p.add_argument("--stack", action="store_true",
                   help="train the points that share the model's shapes (learning rates, "
                        "seeds, weight decay, data seeds) as one vmapped program each")
    p.add_argument("--only", nargs="+", default=[], metavar="KEY=VALUE",
                   help="run only the sweep points with these values, e.g. --only "
                        "model.d_model=32 (a slice of the grid; the table shows every point "
                        "of the grid with a result in --out)")
    p.add_argument("--no-progress", action="store_true")
    _add_overrides(p)

    p = sub.add_parser("report", help="rewrite a sweep's table and plot from its saved results")
    p.add_argument("out_dir")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 done; 2 a bad config, path or run directory (one line on stderr); 1 a
    run stopped by a non-finite loss, or a sweep run that failed; ``PREEMPTED_EXIT`` (75)
    stopped by SIGTERM / SIGINT after writing a checkpoint (rerun with ``--resume``)."""
    from jaxlm.train import (PREEMPTED_EXIT, CheckpointError, NonFiniteTraining, RunDirBusy,
                             TrainingInterrupted)
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (ConfigError, PretrainedError, FileNotFoundError, FileExistsError, RunDirBusy,
            CheckpointError) as e:
        print(f"jaxlm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteTraining as e:
        print(f"jaxlm {args.command}: error: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:
        print(f"jaxlm {args.command}: {e}", file=sys.stderr)
        return PREEMPTED_EXIT


def _run(args: argparse.Namespace) -> int:
    # Imported here so that `jaxlm --version` and argument errors stay fast.
    from jaxlm import runner

    if args.command == "train":
        experiment = runner.load_experiment(args.config, args.overrides)
        config = experiment.base
        run_dir = pathlib.Path(args.run_dir or f"runs/{config.name}")
        row = runner.run_one(config, run_dir, name=config.name, resume=args.resume,
                             progress=not args.no_progress, init_from=args.init_from)
        print(runner.markdown_table([row]))
        print(f"run written to {run_dir}")
    elif args.command == "probe":
        if (args.run_dir is None) == (args.pretrained is None):
            raise ConfigError("probe: give either a run directory or --pretrained PATH")
        if args.pretrained is not None:
            from jaxlm.runner.pretrained import probe_pretrained
            try:
                lengths = tuple(int(n) for n in args.lengths.split(",") if n.strip())
            except ValueError:
                raise ConfigError(f"--lengths must be comma-separated integers, got "
                                  f"{args.lengths!r}") from None
            row = probe_pretrained(args.pretrained, text=args.text, lengths=lengths,
                                   trials=args.trials, context=args.context)
        else:
            row = runner.probe_run(args.run_dir, args.overrides)
        print(json.dumps(row, indent=2))
    elif args.command == "convert":
        from jaxlm.runner.pretrained import convert
        print(f"wrote {convert(args.path, args.to)}")
    elif args.command == "sweep":
        experiment = runner.load_experiment(args.config, args.overrides, args.preset)
        experiment = runner.with_only(runner.with_seeds(experiment, args.seeds), args.only)
        out = pathlib.Path(args.out or f"runs/{experiment.base.name}")
        runner.run_sweep(experiment, out, progress=not args.no_progress, workers=args.workers,
                         stack=args.stack)
        print()
        print((out / "results.md").read_text())
        print(f"\ntable and plot written to {out}/results.{{md,csv,png}}")
    elif args.command == "report":
        rows = runner.read_rows(args.out_dir)
        print(runner.write_report(rows, args.out_dir, title=pathlib.Path(args.out_dir).name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
