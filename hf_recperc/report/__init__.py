"""The perception report of any vision model (transformers, timm, ours): ``scripts/perception_report.py`` and
:func:`perception_report`. See :mod:`hf_recperc.report.run`."""

from .card import push_model_card, update_model_card
from .extract import Backbone, load_backbone, pooled_features
from .run import MIXED_PRECISION, MONITORS, extract_split, main_finding, perception_report, write_report

__all__ = [
    "perception_report",
    "load_backbone",
    "Backbone",
    "pooled_features",
    "extract_split",
    "main_finding",
    "write_report",
    "update_model_card",
    "push_model_card",
    "MONITORS",
    "MIXED_PRECISION",
]
