"""``scripts/push_metric.py`` / ``recperc-push-metric``: publish the subspace probe accuracy metric as a Hub Space, loadable with ``evaluate.load("NS/NAME")``.

    recperc-push-metric --repo_id NS/NAME                      # write to a temporary folder, upload
    recperc-push-metric --repo_id NS/NAME --output_dir space  # write space/NAME/ only, no upload
    recperc-push-metric --repo_id NS/NAME --output_dir space --push

Layout: NAME.py (the module), README.md (metric card with the Space metadata), requirements.txt
(hf_recperc from a pinned source, evaluate) and app.py (evaluate's Gradio widget), in a folder named NAME
(OUTPUT_DIR itself when it is named NAME, else OUTPUT_DIR/NAME): `evaluate.load("space/NAME")` loads it locally.
A file of the user's under one of these names in that folder is an error, nothing is written.

hf_recperc is not on the package index: --hf_recperc_requirement names a pinned source,
'hf_recperc @ git+https://HOST/OWNER/REPO@<40-hex commit>' (default: the git commit this copy was installed from).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence

from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from ..cli import ArgumentParser
from ..metric_hub import metric_space_files, push_metric, write_metric_space
from . import report_error, run_command

__all__ = ["main", "run"]


def run(argv: Sequence[str] | None = None) -> int:
    """Write (and push) the metric's Space layout; raises ``ValueError`` on bad input, returns 1 when the Hub
    refuses or cannot be reached."""
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--repo_id", required=True, help="Hub Space id, 'namespace/name' (name: letters, digits, _)."
    )
    parser.add_argument("--output_dir", help="Write the layout here; without --push nothing is uploaded.")
    parser.add_argument("--push", action="store_true", help="Upload even when --output_dir is given.")
    parser.add_argument("--private", action="store_true", help="Create the Space as private.")
    parser.add_argument(
        "--hf_recperc_requirement",
        help="requirements.txt line that installs hf_recperc: 'hf_recperc @ git+https://...@<40-hex commit>' or an "
        "https wheel URL with #sha256=<hash>; default: the git commit this copy was installed from.",
    )
    parser.add_argument("--commit_message", default="Upload subspace_probe_accuracy metric")
    args = parser.parse_args(argv)
    try:
        if args.output_dir and not args.push:
            folder = write_metric_space(args.output_dir, args.repo_id, args.hf_recperc_requirement)
            print(f"wrote {', '.join(metric_space_files(args.repo_id))} to {folder}")
            return 0
        with tempfile.TemporaryDirectory() as scratch:
            url = push_metric(
                args.repo_id,
                args.output_dir or scratch,
                private=args.private,
                commit_message=args.commit_message,
                hf_recperc_requirement=args.hf_recperc_requirement,
            )
    except (HfHubHTTPError, OfflineModeIsEnabled) as err:
        return report_error(err, 1)
    print(f"pushed the metric to {url}; load it with evaluate.load({args.repo_id!r})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: one-line ``error: ...`` and exit code 2 on bad input."""
    return run_command(run, argv)
