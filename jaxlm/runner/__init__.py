"""The experiment runner: experiment files, sweeps, reports."""

from jaxlm.runner.experiment import (Experiment, grid, load_experiment, run_name, with_only,
                                     with_seeds)
from jaxlm.runner.report import (best_over, markdown_table, over_seeds, read_rows,
                                 table_columns, write_report)
from jaxlm.runner.sweep import describe, load_run, probe_run, run_one, run_sweep
from jaxlm.runner.stacked import run_stacked

__all__ = ["Experiment", "best_over", "describe", "grid", "load_experiment", "load_run", "markdown_table",
           "over_seeds", "probe_run", "read_rows", "run_name", "run_one", "run_stacked", "run_sweep",
           "table_columns", "with_only", "with_seeds", "write_report"]
