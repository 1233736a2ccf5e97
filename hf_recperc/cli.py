"""Command-line plumbing shared by every command: data flags, argument parsing, ``--config_overrides``.

Commands parse ``HfArgumentParser`` dataclasses from command-line flags, from one ``.json`` / ``.yaml`` file
of arguments, or both, like timm's ``-c``::

    recperc-pretrain run.yaml                       # every argument from the file
    recperc-pretrain -c run.yaml --max_steps 10     # the file, then flags on top of it (flags win)

Errors are :class:`ArgumentError` (a ``ValueError``) with a one-line message that names the argument, so
that :func:`hf_recperc.commands.run_command` can print ``error: <message>`` instead of a traceback
(docs/design.md, "Errors and bad input").
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import reprlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml
from transformers import HfArgumentParser

__all__ = [
    "ArgumentError",
    "ArgumentParser",
    "check_no_remaining_arguments",
    "did_you_mean",
    "DataArguments",
    "DataclassArgumentParser",
    "load_config_file",
    "parse_arguments",
    "parse_config_overrides",
]

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
# Largest argument file read, and largest YAML document once its aliases are expanded (scalar characters plus
# one per node): argument files are a few KB, and an alias bomb (each line repeating the previous one ten times)
# must be refused before anything walks or prints its billions of values.
MAX_CONFIG_BYTES = 10 * 2**20
MAX_CONFIG_EXPANDED = 10**6


def _short(value: Any) -> str:
    """``repr(value)`` cut to a few items and characters: a quoted value keeps an error message one readable line."""
    shortened = reprlib.Repr()  # keyword arguments need Python 3.12
    shortened.maxlist = shortened.maxdict = 4
    shortened.maxstring = shortened.maxother = 40
    shortened.maxlevel = 3
    return shortened.repr(value)


class ArgumentError(ValueError):
    """A bad command-line argument, argument file or override string; the message names the argument."""


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that raises :class:`ArgumentError` instead of printing usage and exiting,
    so every command reports bad arguments the same way (one line, exit code 2)."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentError(message)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" suffix, except where the help text already says what the default is (an
    argument whose default is ``None`` and means "decided later", or a help that names it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default is None:
            return text
        return super()._get_help_string(action)


class DataclassArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` that raises :class:`ArgumentError` instead of printing usage and exiting, and states
    each default once in ``--help``."""

    def __init__(self, dataclass_types, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(dataclass_types, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ArgumentError(message)


@dataclass
class DataArguments:
    """Which images to use (see :func:`hf_recperc.images.load_image_dataset`); the same flags in every script."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "A Hub id (e.g. uoft-cs/cifar10), a local directory (train.parquet / test.parquet files, "
            "an imagefolder tree or a save_to_disk directory), or 'digits'. Default: the embedded scikit-learn "
            "digits (8x8, offline)."
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

    def load(self, seed: int = 0):
        """The train and validation splits these flags name (``seed`` drives a carved-out validation split)."""
        from .images.sources import load_image_dataset  # noqa: PLC0415  (datasets, torch: not for --help)

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
    """Parse flags, one argument file, or a file with flags on top, into the given dataclasses.

    Accepted forms: ``FLAGS``, ``FILE.yaml [FLAGS]`` (the file first, as a positional) and
    ``-c FILE.yaml FLAGS`` / ``--config FILE.json FLAGS``. Flags given on the command line override the
    file's values. Returns one instance per type, in order.

    Raises:
        ArgumentError: for a missing or malformed file, a key or flag that no dataclass declares (naming the
            closest valid one), or a value of the wrong type (naming the argument).
    """
    # No prefix abbreviations: a typo such as --epoch must be an error, not silently --epochs.
    parser = DataclassArgumentParser(
        tuple(dataclass_types),
        epilog="-c/--config FILE.yaml|json: read arguments from a file; flags win.",
        allow_abbrev=False,
    )
    config_path, argv = _split_config_flag(list(sys.argv[1:] if argv is None else argv))
    file_argv = _config_to_argv(parser, config_path, load_config_file(config_path)) if config_path else []
    *parsed, remaining = parser.parse_args_into_dataclasses(
        args=file_argv + argv, return_remaining_strings=True
    )
    check_no_remaining_arguments(parser, remaining)
    return tuple(parsed)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping of argument names to values in a ``.json`` / ``.yaml`` / ``.yml`` file.

    Raises:
        ArgumentError: naming the file when it is missing, not valid JSON / YAML, or not a mapping.
    """
    path = Path(path)
    if path.suffix not in CONFIG_SUFFIXES:
        raise ArgumentError(f"config: expected a .json, .yaml or .yml file, got {str(path)!r}")
    if not path.is_file():
        raise ArgumentError(f"config: file {str(path)!r} not found")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ArgumentError(
            f"config: {str(path)!r} is {path.stat().st_size:,} bytes; argument files are at most "
            f"{MAX_CONFIG_BYTES:,} bytes"
        )
    text = path.read_text()
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_BoundedSafeLoader)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ArgumentError(f"config: {str(path)!r} is not valid {kind}: {_one_line(err)}") from None
    except RecursionError:
        raise ArgumentError(f"config: {str(path)!r} is nested too deeply to be an argument file") from None
    except _AliasBomb as err:
        raise ArgumentError(f"config: {str(path)!r}: {err}") from None
    if values is None:  # an empty YAML file: no arguments
        return {}
    if not isinstance(values, dict):
        raise ArgumentError(
            f"config: {str(path)!r} must map argument names to values, got a {type(values).__name__}"
        )
    return values


class _AliasBomb(Exception):
    """A YAML document whose aliases expand beyond :data:`MAX_CONFIG_EXPANDED`."""


class _BoundedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document whose aliases (``*name``) expand beyond
    :data:`MAX_CONFIG_EXPANDED`, measured on the composed node graph before any Python object is built."""

    def compose_document(self):
        node = super().compose_document()
        if _expanded_size(node, {}) > MAX_CONFIG_EXPANDED:
            raise _AliasBomb(
                f"its aliases (*name) expand to more than {MAX_CONFIG_EXPANDED:,} values; write the values out"
            )
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Characters plus nodes of ``node`` with every alias expanded; ``sizes`` memoises shared nodes, so the cost
    is linear in the file, not in the expansion."""
    if id(node) not in sizes:
        if isinstance(node, yaml.ScalarNode):
            size = 1 + len(node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(
                _expanded_size(key, sizes) + _expanded_size(value, sizes) for key, value in node.value
            )
        else:
            size = 1 + sum(_expanded_size(item, sizes) for item in node.value)
        sizes[id(node)] = size
    return sizes[id(node)]


def parse_config_overrides(text: str | None, argument: str = "config_overrides") -> dict[str, Any]:
    """``"depths=[2,2],latent_dim=64,act=gelu"`` -> ``{"depths": [2, 2], "latent_dim": 64, "act": "gelu"}``.

    Items are separated by commas outside brackets, braces and quotes; values are parsed as JSON when they
    can be (numbers, ``true`` / ``false`` / ``null``, lists, objects, quoted strings), else kept as strings.

    Raises:
        ArgumentError: naming ``argument`` (``config_overrides``; ``monitor_settings`` of the report) and the bad
            item (no ``=``, empty key, unbalanced brackets).
    """
    if not text:
        return {}
    overrides = {}
    for item in _split_top_level(text, argument):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ArgumentError(f"{argument}: expected 'key=value,key=value', got item {item!r} in {text!r}")
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    return overrides


def _split_top_level(text: str, argument: str = "config_overrides") -> list[str]:
    """Split on the commas that are outside brackets, braces and double quotes."""
    items, start, quoted, open_brackets = [], 0, False, []
    pairs = {"]": "[", "}": "{"}
    for index, char in enumerate(text):
        if char == '"' and text[index - 1 : index] != "\\":
            quoted = not quoted
        elif quoted:
            continue
        elif char in "[{":
            open_brackets.append(char)
        elif char in pairs:
            if not open_brackets or open_brackets.pop() != pairs[char]:
                raise ArgumentError(f"{argument}: unbalanced {char!r} at position {index} in {text!r}")
        elif char == "," and not open_brackets:
            items.append(text[start:index])
            start = index + 1
    if open_brackets or quoted:
        raise ArgumentError(f"{argument}: unclosed bracket or quote in {text!r}")
    return [*items, text[start:]]


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """``(config file or None, the other arguments)``: ``-c F``, ``--config F``, ``--config=F``, or a leading
    positional file name ending in ``.json`` / ``.yaml`` / ``.yml``."""
    if argv and not argv[0].startswith("-") and argv[0].endswith(CONFIG_SUFFIXES):
        return argv[0], argv[1:]
    for index, arg in enumerate(argv):
        if arg in ("-c", "--config"):
            if index + 1 == len(argv) or argv[index + 1].startswith("-"):
                raise ArgumentError(f"argument {arg}: expected a .json or .yaml file name after it")
            return argv[index + 1], argv[:index] + argv[index + 2 :]
        if arg.startswith("--config="):
            return arg.partition("=")[2], argv[:index] + argv[index + 1 :]
    return None, argv


def _config_to_argv(parser: DataclassArgumentParser, path: str, values: dict[str, Any]) -> list[str]:
    """The file's values as flags, placed before the command line's so that argparse's last-wins makes the
    flags override the file, and so that argparse checks every value's type exactly as it checks a flag's."""
    fields = {f.name: f for dtype in parser.dataclass_types for f in dataclasses.fields(dtype) if f.init}
    list_valued = {action.dest for action in parser._actions if action.nargs in ("+", "*")}
    argv: list[str] = []
    for key, value in values.items():
        if key not in fields:
            raise ArgumentError(f"config {path!r}: unknown key {key!r}{did_you_mean(key, fields)}")
        if value is None:
            if fields[key].default is not None:
                raise ArgumentError(
                    f"config {path!r}: {key}: null is not allowed (default {fields[key].default!r})"
                )
            continue  # null means the default, which is None
        if key in list_valued:
            items = value if isinstance(value, list) else [value]
            if any(isinstance(item, (list, dict)) for item in items):
                raise ArgumentError(
                    f"config {path!r}: {key}: expected a list of plain values, got {_short(value)}"
                )
            argv += [f"--{key}", *map(_as_token, items)]
        elif key == "config_overrides" and isinstance(value, dict):
            # A YAML/JSON mapping is the natural spelling in a file; write it in the flag's key=value form.
            argv.append(f"--{key}=" + ",".join(f"{name}={json.dumps(item)}" for name, item in value.items()))
        elif isinstance(value, (list, dict)):
            raise ArgumentError(f"config {path!r}: {key}: expected one value, got {_short(value)}")
        else:
            argv.append(f"--{key}={_as_token(value)}")  # '=': a value may start with '-'
    return argv


def _as_token(value: Any) -> str:
    # YAML/JSON booleans as the strings HfArgumentParser's string_to_bool reads.
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_no_remaining_arguments(parser: argparse.ArgumentParser, remaining: Sequence[str]) -> None:
    """Raise :class:`ArgumentError` for what ``parse_known_args`` left over, naming the first unknown flag
    and the closest known one."""
    if not remaining:
        return
    flags = [arg for arg in remaining if arg.startswith("-")]
    if not flags:
        raise ArgumentError(
            f"unexpected value {remaining[0]!r}: arguments are flags (--name value); see --help"
        )
    flag = flags[0].partition("=")[0]
    options = [option for action in parser._actions for option in action.option_strings]
    raise ArgumentError(f"unknown argument {flag!r}{did_you_mean(flag, options)}")


def did_you_mean(name: str, valid) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else "; see --help for the valid names"


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
