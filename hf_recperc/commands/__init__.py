"""The body of every command-line script, one module each, with ``main(argv=None) -> int``.

``scripts/<name>.py`` are thin files that call these, and ``pyproject.toml`` installs them as console
commands (``recperc-pca-classification``, ``recperc-alignment``, ...). Each module keeps a ``run(argv)``
that returns its result and raises on bad input (what tests call), and a ``main`` that wraps it in
:func:`run_command`, so that every command reports bad arguments the same way: one line
``error: <message>`` on stderr and exit code 2, never a traceback (docs/design.md, "Errors and bad input").
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

__all__ = ["USAGE_ERRORS", "run_command", "report_error", "one_line"]

# What counts as "the user gave bad input": argument / value checks (ValueError, which includes
# hf_recperc.cli.ArgumentError and json.JSONDecodeError), named input files that do not exist, and
# argument files that are not valid YAML. Anything else is a bug or a runtime failure and keeps its traceback.
USAGE_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, yaml.YAMLError)

# Set to 1 to get the full traceback of a usage error (debugging the checks themselves).
TRACEBACK_ENV = "RECPERC_TRACEBACK"


def run_command(body: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run ``body(argv)`` and turn a usage error into one line on stderr and exit code 2.

    Args:
        body: the command; parses ``argv`` (``None``: ``sys.argv[1:]``) and does the work. Its return value
            is the exit code when it is an ``int`` (e.g. 1 for a failed upload), else the command succeeded.
        argv: the arguments, without the program name.

    Returns:
        The exit code: 0 on success, 2 for a :data:`USAGE_ERRORS` exception, or ``body``'s own code.
    """
    try:
        result = body(argv)
    except USAGE_ERRORS as err:
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        return report_error(err, 2)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


# Wait (at most 10 s) for the launcher process to exit, then print the line.
_REPRINT = """import os, sys, time
launcher, line, start = int(sys.argv[1]), sys.argv[2], time.time()
while time.time() - start < 10:
    try:
        os.kill(launcher, 0)
    except OSError:
        break
    time.sleep(0.05)
sys.stderr.write(line + "\\n")
"""


def report_error(error: BaseException, code: int) -> int:
    """Print ``error: <message>`` as one line on stderr and return ``code``.

    Under ``accelerate launch`` the launcher answers a non-zero exit with its own ``CalledProcessError`` traceback
    (and exit code 1), printed after ours; a detached process prints the line again once the launcher has exited,
    so that the user reads it last (main process only).
    """
    line = f"error: {one_line(error)}"
    print(line, file=sys.stderr, flush=True)
    launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ  # set by `accelerate launch` for its children
    if launched and os.environ.get("RANK", "0") == "0":
        import subprocess  # noqa: PLC0415

        subprocess.Popen([sys.executable, "-c", _REPRINT, str(os.getppid()), line], start_new_session=True)
    return code


def one_line(err: BaseException) -> str:
    """The exception's message on one line (YAML and some library errors span several)."""
    return " ".join(str(err).split()) or type(err).__name__
