"""``recperc-report-table``: several perception reports compared in one table and one figure.

    recperc-report-table runs/ae/report runs/vit/report.json timm_report/ --output_dir comparison

Reads each ``report.json`` (written by ``recperc-report``; a folder holding one works too), then writes
``report.md`` (the table), ``comparison.csv`` and ``accuracy_per_layer.png`` into ``--output_dir``
(:mod:`hf_recperc.report.table`). Every report is read and checked, and the folder too, before anything is
written: bad input is one line ``error: reports: ...`` (or ``output_dir: ...``) and exit code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import DataclassArgumentParser, check_no_remaining_arguments
from . import run_command

__all__ = ["TableArguments", "main", "run"]


@dataclass
class TableArguments:
    output_dir: str = field(
        default="outputs/report_table",
        metadata={"help": "Where report.md, comparison.csv and the figure go."},
    )


def run(argv: Sequence[str] | None = None) -> Path:
    """Parse ``argv``, read every report, check the folder, write the comparison; returns the folder."""
    from ..report.table import load_reports, table_output_dir, write_comparison  # noqa: PLC0415

    parser = DataclassArgumentParser(TableArguments, allow_abbrev=False)
    parser.add_argument(
        "reports", nargs="+", help="report.json files written by recperc-report, or their folders."
    )
    args, extra, remaining = parser.parse_args_into_dataclasses(
        args=sys.argv[1:] if argv is None else argv, return_remaining_strings=True
    )
    check_no_remaining_arguments(parser, remaining)
    reports = load_reports(extra.reports)
    table_output_dir(args.output_dir).check()  # a user's report.md there: refused before writing anything
    folder = write_comparison(reports, args.output_dir)
    print(f"comparison of {len(reports)} reports in {folder}")
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``recperc-report-table``: exit code 0, or 2 with ``error: ...`` for bad input."""
    return run_command(run, argv)
