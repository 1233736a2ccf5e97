"""E3 / E4 (docs/science.md section 3): plot pretraining runs side by side from their ``history.json``.

Example::

    python scripts/compare_runs.py runs/ae_g0 runs/ae_g0.01 --output guidance.png

One panel per metric found (reconstruction MSE, online probe accuracy, subspace probe accuracies, one
panel per spectral band error), one colour per run, epoch on the x axis. Legends come from each run's
``results.json`` (``args.guidance``, ``args.corruption``), else the directory name. The file format is
described in :mod:`hf_recperc.experiment_plots`.
"""

import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from hf_recperc.experiment_plots import plot_runs


@dataclass
class CompareArguments:
    output: str = field(default="compare_runs.png", metadata={"help": "PNG file to write."})
    title: str | None = field(default=None, metadata={"help": "Figure title."})


def main(argv=None):
    parser = HfArgumentParser(CompareArguments)
    parser.add_argument("run_dirs", nargs="+", help="Run directories, each holding history.json.")
    args, extra = parser.parse_args_into_dataclasses(args=sys.argv[1:] if argv is None else argv)
    figure = plot_runs(extra.run_dirs, args.output, title=args.title)
    print(f"figure: {figure}")
    return figure


if __name__ == "__main__":
    main()
