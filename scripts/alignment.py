"""E5 (docs/science.md sections 3-4): which noise can make a linear autoencoder learn features for perception?

A thin shell over :mod:`hf_recperc.commands.alignment` (installed as ``recperc-alignment``);
``python scripts/alignment.py --help`` lists the arguments.
"""

import sys

from hf_recperc.commands.alignment import main

if __name__ == "__main__":
    sys.exit(main())
