"""E3 / E4 (docs/science.md section 3): plot pretraining runs side by side from their ``history.json``.

Example::

    recperc-compare-runs runs/ae_g0 runs/ae_g0.01 --output guidance.png

One panel per metric found (reconstruction MSE, online probe accuracy, subspace probe accuracies, one
panel per spectral band error), one colour per run, epoch on the x axis. Legends come from each run's
``results.json`` (``args.guidance``, ``args.corruption``), else the directory name. The file format is
described in :mod:`hf_recperc.experiment_plots`.
"""

import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import DataclassArgumentParser, check_no_remaining_arguments
from ..experiment_plots import load_run, plot_runs
from ..publish import file_output
from . import run_command


@dataclass
class CompareArguments:
    output: str = field(default="compare_runs.png", metadata={"help": "PNG file to write."})
    title: str | None = field(default=None, metadata={"help": "Figure title."})


def run(argv: Sequence[str] | None = None) -> Path:
    """Parse ``argv``, read every run's ``history.json`` (all before drawing), write the figure; returns its path."""
    parser = DataclassArgumentParser(CompareArguments, allow_abbrev=False)
    parser.add_argument("run_dirs", nargs="+", help="Run directories, each holding history.json.")
    args, extra, remaining = parser.parse_args_into_dataclasses(
        args=sys.argv[1:] if argv is None else argv, return_remaining_strings=True
    )
    check_no_remaining_arguments(parser, remaining)
    output, name = file_output(args.output, "compare_runs")
    output.check()  # a user's file at --output: refused before reading the runs
    runs = [load_run(run_dir) for run_dir in extra.run_dirs]  # a missing run is an error before any drawing
    figure = output.write({name: functools.partial(plot_runs, runs, title=args.title)}) / name
    print(f"figure: {figure}")
    return figure


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``recperc-compare-runs``: exit code 0, or 2 with ``error: ...`` for bad input."""
    return run_command(run, argv)
