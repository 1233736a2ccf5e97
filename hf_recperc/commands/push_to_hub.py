"""Upload a finished run (model, image processor, model card, results, figures, logs) to the Hub.

    recperc-push-to-hub outputs/recperc --hub_model_id user/recperc-digits [--hub_private]

The directory's own README.md (our card) is uploaded as it is: `PreTrainedModel.push_to_hub` is not used because
it would replace it with transformers' template. Checkpoints are left out.
"""

import argparse
import sys
from collections.abc import Sequence

from ..cards import HubPushError, push_to_hub
from ..cli import ArgumentParser
from . import one_line, run_command


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and upload; returns 0, or 1 when the upload itself fails (offline, Hub error)."""
    parser = ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("output_dir", help="A directory written by scripts/pretrain.py.")
    parser.add_argument("--hub_model_id", required=True, help="Hub repository, 'user/name'.")
    parser.add_argument("--hub_private", action="store_true", help="Create the repository as private.")
    parser.add_argument("--commit_message", default="Upload hf_recperc model", help="Commit message.")
    args = parser.parse_args(argv)
    try:
        url = push_to_hub(
            args.output_dir, args.hub_model_id, private=args.hub_private, commit_message=args.commit_message
        )
    except HubPushError as err:  # a runtime failure, not bad input: exit code 1
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1
    print(f"pushed {args.output_dir} to {url}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``recperc-push-to-hub``: exit code 0, or 2 with ``error: ...`` for bad input."""
    return run_command(run, argv)
