"""The ``.py`` files a saved model carries, so that it loads with ``trust_remote_code=True`` without hf_recperc.

transformers imports remote code from one flat folder: a module may only import its neighbours, with one dot
(``from .corruption import ...``). Inside the package a model family lives in ``hf_recperc/models/<family>/``
and imports shared modules from above (``from ...corruption import ...``), which transformers' own
``register_for_auto_class`` copying cannot follow. :func:`remote_code_sources` gathers a family's modules and
everything they import relatively, each under its file name, with every relative import rewritten to that flat
form; :func:`write_remote_code` writes them next to the weights (docs/design.md, "Adding a model family").

This module is itself part of what it writes (the models import it), so it imports only the standard library.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path

__all__ = ["remote_code_sources", "write_remote_code"]

# `from .x import`, `from ..x.y import` at the start of a line (also indented, inside functions)
_RELATIVE_IMPORT = re.compile(r"^(\s*from\s+)(\.+[\w.]*)(\s+import\b)", re.MULTILINE)


def remote_code_sources(*classes: type) -> dict[str, str]:
    """``{file name: source}`` of the modules defining ``classes`` and of every module they import relatively.

    Every relative import becomes ``from .<module> import ...``, so the files work side by side in one folder.

    Raises:
        ValueError: when two such modules share a file name, or a module imports a package relatively
            (``from . import x``): neither can be laid out flat.
    """
    sources: dict[str, str] = {}
    origins: dict[str, str] = {}
    pending = [sys.modules[cls.__module__] for cls in classes]
    while pending:
        module = pending.pop()
        name = Path(module.__file__).name
        if name in origins:
            if origins[name] != module.__name__:
                raise ValueError(
                    f"remote code: {module.__name__} and {origins[name]} are both {name!r}; "
                    "a saved model's code lives in one folder, so module file names must differ"
                )
            continue
        origins[name] = module.__name__

        def flatten(match: re.Match, module=module) -> str:
            target = importlib.import_module(importlib.util.resolve_name(match[2], module.__package__))
            if Path(target.__file__).name == "__init__.py":
                raise ValueError(
                    f"remote code: {module.__name__} imports the package {target.__name__} relatively; "
                    "import its modules instead"
                )
            pending.append(target)
            return f"{match[1]}.{target.__name__.rpartition('.')[2]}{match[3]}"

        sources[name] = _RELATIVE_IMPORT.sub(flatten, Path(module.__file__).read_text(encoding="utf-8"))
    return sources


def write_remote_code(directory: str | os.PathLike, *classes: type) -> list[str]:
    """Write :func:`remote_code_sources` of ``classes`` into ``directory``; returns the file names written."""
    sources = remote_code_sources(*classes)
    for name, source in sources.items():
        (Path(directory) / name).write_text(source, encoding="utf-8")
    return sorted(sources)
