"""Upload a finished run (model, image processor, model card, results, figures, logs) to the Hub.

A thin shell over :mod:`hf_recperc.commands.push_to_hub` (installed as ``recperc-push-to-hub``);
``python scripts/push_to_hub.py --help`` lists the arguments.
"""

import sys

from hf_recperc.commands.push_to_hub import main

if __name__ == "__main__":
    sys.exit(main())
