"""E1 (docs/science.md section 3): images next to their projections onto top and bottom PCA subspaces.

A thin shell over :mod:`hf_recperc.commands.pca_figure` (installed as ``recperc-pca-figure``);
``python scripts/pca_figure.py --help`` lists the arguments.
"""

import sys

from hf_recperc.commands.pca_figure import main

if __name__ == "__main__":
    sys.exit(main())
