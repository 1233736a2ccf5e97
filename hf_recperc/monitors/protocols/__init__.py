"""Standard evaluation protocols beside the subspace probe (docs/protocols.md)."""

from .ridge_cv import DEFAULT_RIDGES, RIDGE_CV, RidgeCVMonitor, kfold_assignments, ridge_cv_key, ridge_cv_protocol

__all__ = ["RIDGE_CV", "DEFAULT_RIDGES", "RidgeCVMonitor", "kfold_assignments", "ridge_cv_key", "ridge_cv_protocol"]
