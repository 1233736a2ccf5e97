"""Upload a finished run (model, image processor, model card, results, figures, logs) to the Hub.

    python scripts/push_to_hub.py outputs/recperc --hub_model_id user/recperc-digits [--hub_private]

The directory's own README.md (our card) is uploaded as it is: `PreTrainedModel.push_to_hub` is not used because
it would replace it with transformers' template. Checkpoints are left out.
"""

import argparse
import sys

from hf_recperc.cards import HubPushError, push_to_hub


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    except (ValueError, HubPushError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"pushed {args.output_dir} to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
