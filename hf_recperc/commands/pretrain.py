"""``accelerate launch scripts/pretrain.py`` / ``recperc-pretrain``: train a reconstruction model and watch its
perception while it learns.

Exit codes: 0 done, 2 bad arguments or data (one line ``error: ...``, nothing trained or written; under
``accelerate launch`` the launcher itself exits with 1 and the line is printed once, after its traceback), 1 a NaN
loss or a failed Hub push (the message says what was kept).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

from . import configure_logging, report_error, run_command

__all__ = ["main", "run"]

logger = logging.getLogger("hf_recperc.training")


def run(argv: Sequence[str] | None = None) -> int:
    """Parse, train, print where the results went; raises ``ValueError`` on bad input."""
    from ..training.arguments import parse_args  # noqa: PLC0415  (light: --help needs no torch)

    data_args, model_args, args = parse_args(argv)
    configure_logging(logging.INFO)
    if os.environ.get("RANK", "0") == "0":  # the first line within a second or two, before the heavy imports
        logger.info(f"pretrain: output_dir {args.output_dir}; loading the data and building the model")
    from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: PLC0415

    from ..cards import HubPushError  # noqa: PLC0415
    from ..results import EVAL_PREFIX  # noqa: PLC0415
    from ..training import NonFiniteLossError, train  # noqa: PLC0415

    try:
        with logging_redirect_tqdm():  # log lines above the progress bar, not through it
            results = train(data_args, model_args, args)
    except (NonFiniteLossError, HubPushError) as err:
        return report_error(err, 1)
    if os.environ.get("RANK", "0") == "0":
        metrics = {k: v for k, v in results.items() if k.startswith(EVAL_PREFIX)}
        print(f"results in {args.output_dir}: {json.dumps(metrics, indent=1)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: :func:`run` with one-line errors (exit code 2)."""
    return run_command(run, argv)
