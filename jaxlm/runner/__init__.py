"""The experiment runner: experiment files, sweeps, reports."""

from jaxlm.runner.experiment import Experiment, grid, load_experiment, run_name, with_seeds
from jaxlm.runner.report import (markdown_table, over_seeds, read_rows, table_columns,
                                 write_report)
from jaxlm.runner.sweep import describe, load_run, probe_run, run_one, run_sweep

__all__ = ["Experiment", "describe", "grid", "load_experiment", "load_run", "markdown_table",
           "over_seeds", "probe_run", "read_rows", "run_name", "run_one", "run_sweep",
           "table_columns", "with_seeds", "write_report"]
