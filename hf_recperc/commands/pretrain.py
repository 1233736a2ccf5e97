"""``accelerate launch scripts/pretrain.py`` / ``recperc-pretrain``: train a reconstruction model and watch its
perception while it learns.

Exit codes: 0 done, 2 bad arguments or data (one line ``error: ...``, nothing trained or written), 1 a NaN loss
or a failed Hub push (the message says what was kept).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["main", "report_error"]


# Wait (at most 10 s) for the launcher process to exit, then print the line.
_REPRINT = """import os, sys, time
launcher, line, start = int(sys.argv[1]), sys.argv[2], time.time()
while time.time() - start < 10:
    try:
        os.kill(launcher, 0)
    except OSError:
        break
    time.sleep(0.05)
sys.stderr.write(line + "\\n")
"""


def report_error(error: BaseException, code: int) -> int:
    """Print ``error: <message>`` as one line on stderr and return ``code``.

    Under ``accelerate launch`` the launcher answers a non-zero exit with its own ``CalledProcessError`` traceback,
    printed after ours; a detached process prints the line again once the launcher has exited, so that the user
    reads it last (main process only).
    """
    line = f"error: {' '.join(str(error).split())}"
    print(line, file=sys.stderr, flush=True)
    launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ  # set by `accelerate launch` for its children
    if launched and os.environ.get("RANK", "0") == "0":
        import subprocess  # noqa: PLC0415

        subprocess.Popen([sys.executable, "-c", _REPRINT, str(os.getppid()), line], start_new_session=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, train, print where the results went."""
    from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: PLC0415

    from ..cards import HubPushError  # noqa: PLC0415
    from ..training import NonFiniteLossError, parse_args, train  # noqa: PLC0415

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # accelerate reports every file of every checkpoint at INFO; keep its warnings only.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    try:
        data_args, model_args, args = parse_args(argv)
        with logging_redirect_tqdm():
            results = train(data_args, model_args, args)
    except ValueError as err:
        return report_error(err, 2)
    except (NonFiniteLossError, HubPushError) as err:
        return report_error(err, 1)
    if os.environ.get("RANK", "0") == "0":
        metrics = {k: v for k, v in results.items() if k.startswith("eval/")}
        print(f"results in {args.output_dir}: {json.dumps(metrics, indent=1)}")
    return 0
