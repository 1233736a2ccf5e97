"""E3 / E4 (docs/science.md section 3): plot pretraining runs side by side from their ``history.json``.

A thin shell over :mod:`hf_recperc.commands.compare_runs` (installed as ``recperc-compare-runs``);
``python scripts/compare_runs.py --help`` lists the arguments.
"""

import sys

from hf_recperc.commands.compare_runs import main

if __name__ == "__main__":
    sys.exit(main())
