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

__all__ = ["main"]


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
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (NonFiniteLossError, HubPushError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        metrics = {k: v for k, v in results.items() if k.startswith("eval/")}
        print(f"results in {args.output_dir}: {json.dumps(metrics, indent=1)}")
    return 0
