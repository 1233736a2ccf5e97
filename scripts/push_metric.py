"""Publish the subspace probe accuracy metric as a Hub Space, loadable with ``evaluate.load("NS/NAME")``.

    python scripts/push_metric.py --repo_id NS/NAME                      # write to a temporary folder, upload
    python scripts/push_metric.py --repo_id NS/NAME --output_dir space  # write space/NAME/ only, no upload
    python scripts/push_metric.py --repo_id NS/NAME --output_dir space --push

Layout: NAME.py (the module), README.md (metric card with the Space metadata), requirements.txt
(hf_recperc, evaluate) and app.py (evaluate's Gradio widget), in a folder named NAME (OUTPUT_DIR itself when
it is named NAME, else OUTPUT_DIR/NAME): `evaluate.load("space/NAME")` loads it locally.
"""

import sys

from hf_recperc.commands.push_metric import main

if __name__ == "__main__":
    sys.exit(main())
