"""E2 (docs/science.md section 3): classifiers on images projected onto top and bottom PCA subspaces.

A thin shell over :mod:`hf_recperc.commands.pca_classification` (installed as ``recperc-pca-classification``);
``python scripts/pca_classification.py --help`` lists the arguments.
"""

import os

# On a shared CPU machine OpenMP threads that busy-wait for each other slow training several-fold when
# other processes compete for the cores; passive waiting costs little when the machine is free.
# Must be set before torch is imported; an explicit setting by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402

from hf_recperc.commands.pca_classification import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
