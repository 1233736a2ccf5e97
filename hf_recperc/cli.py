"""Command-line plumbing shared by every script: data flags and argument parsing.

Scripts parse ``HfArgumentParser`` dataclasses, from the command line or from one ``.json`` / ``.yaml`` file
of arguments (``python scripts/pretrain.py my_run.yaml``), and name their data with :class:`DataArguments`,
the same flags everywhere.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from .data import ImageData, load_image_dataset

__all__ = ["DataArguments", "parse_arguments"]


@dataclass
class DataArguments:
    """Which images to use (see :func:`hf_recperc.data.load_image_dataset`); the same flags in every script."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub id, a local directory (parquet files such as ../shared/data/cifar10, imagefolder or "
            "save_to_disk), or 'digits'. Default: the embedded scikit-learn digits (8x8, offline)."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub configuration name."})
    train_file: str | None = field(default=None, metadata={"help": "A parquet/csv/json file for training."})
    validation_file: str | None = field(
        default=None, metadata={"help": "A parquet/csv/json file for evaluation."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (detected when omitted)."})
    label_column: str | None = field(default=None, metadata={"help": "Label column (detected when omitted)."})
    train_val_split: float = field(
        default=0.2,
        metadata={"help": "Fraction of train held out for validation when the data has no such split."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep the first N evaluation rows."})

    def load(self, seed: int = 0) -> ImageData:
        """The train and validation splits these flags name (``seed`` drives a carved-out validation split)."""
        return load_image_dataset(
            self.dataset_name,
            dataset_config_name=self.dataset_config_name,
            train_file=self.train_file,
            validation_file=self.validation_file,
            image_column=self.image_column,
            label_column=self.label_column,
            train_val_split=self.train_val_split,
            max_train_samples=self.max_train_samples,
            max_eval_samples=self.max_eval_samples,
            seed=seed,
        )


def parse_arguments(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple:
    """Parse the command line, or a single ``.json`` / ``.yaml`` argument file, into the given dataclasses.

    Returns one instance per type, in order. Unknown flags are an error that names them.
    """
    parser = HfArgumentParser(tuple(dataclass_types))
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return tuple(parser.parse_json_file(argv[0]))
    if len(argv) == 1 and argv[0].endswith((".yaml", ".yml")):
        return tuple(parser.parse_yaml_file(argv[0]))
    return tuple(parser.parse_args_into_dataclasses(args=argv))
