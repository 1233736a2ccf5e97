"""The body of every command-line script, one module each, with ``main(argv=None) -> int``.

``scripts/<name>.py`` are thin files that call these, and ``pyproject.toml`` installs them as console
commands (``recperc-pca-classification``, ``recperc-alignment``, ...). Each module keeps a ``run(argv)``
that returns its result and raises on bad input (what tests call), and a ``main`` that wraps it in
:func:`run_command`, so that every command reports bad arguments the same way: one line
``error: <message>`` on stderr and exit code 2, never a traceback (docs/design.md, "Errors and bad input").
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

__all__ = ["USAGE_ERRORS", "configure_logging", "run_command", "report_error", "one_line"]

# What counts as "the user gave bad input": argument / value checks (ValueError, which includes
# hf_recperc.cli.ArgumentError and json.JSONDecodeError), named input files that do not exist, and
# argument files that are not valid YAML. Anything else is a bug or a runtime failure and keeps its traceback.
USAGE_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, yaml.YAMLError)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# huggingface_hub's HTTP layer warns on each retry of an unreachable Hub ("Retrying in 2s [Retry 2/5]"); one
# line of each kind tells the user as much as five.
_RETRY_LOGGER = "huggingface_hub.utils._http"

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


# Wait (at most 10 s) for the launcher process to exit, then write the line to the launcher's stderr (an
# inherited descriptor). An exited launcher that its parent has not reaped yet is a zombie, which os.kill still
# finds: a parent that reads the output to its end before waiting (subprocess.run(capture_output=True)) reaps it
# only after this printer closes the pipe, so a zombie counts as exited.
_REPRINT = """import os, sys, time
launcher, descriptor, line, start = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], time.time()
def running(pid):
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False
while time.time() - start < 10 and running(launcher):
    time.sleep(0.05)
os.write(descriptor, (line + "\\n").encode())
"""


def report_error(error: BaseException, code: int) -> int:
    """Print ``error: <message>`` as one line on stderr and return ``code``.

    Under ``accelerate launch`` the launcher answers a non-zero exit with its own ``CalledProcessError`` traceback
    (and exit code 1) after our output; accelerate >= 1.16 also captures the child's stderr and prints it again in
    that traceback. So on the main process the line is handed to a detached process that prints it on the
    launcher's own stderr once the launcher has exited: the user reads it last, and once. Where that cannot be
    arranged (no ``/proc``), the line is printed here.
    """
    line = f"error: {one_line(error)}"
    launched = "ACCELERATE_DYNAMO_BACKEND" in os.environ  # set by `accelerate launch` for its children
    if not (launched and os.environ.get("RANK", "0") == "0" and _reprint_after_launcher(line)):
        print(line, file=sys.stderr, flush=True)
    return code


def _reprint_after_launcher(line: str) -> bool:
    """Start the detached printer on the launcher's stderr; ``False`` when it cannot be opened."""
    import subprocess  # noqa: PLC0415

    try:
        # Append mode: when stderr is a regular file (a log), "w" would truncate it.
        launcher_stderr = open(f"/proc/{os.getppid()}/fd/2", "ab")  # noqa: SIM115
    except OSError:
        return False
    with launcher_stderr:
        # The printer must not hold our stderr: accelerate >= 1.16 reads it through a pipe until every writer
        # closes it, so a printer holding it would keep the launcher waiting.
        subprocess.Popen(
            [sys.executable, "-c", _REPRINT, str(os.getppid()), str(launcher_stderr.fileno()), line],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(launcher_stderr.fileno(),), start_new_session=True,
        )  # fmt: skip
    return True


def one_line(err: BaseException) -> str:
    """The exception's message on one line (YAML and some library errors span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def configure_logging(level: int = logging.INFO) -> None:
    """Set up logging for a command: one format, each record printed once, repeated Hub retries once.

    huggingface_hub and datasets attach a handler of their own to their library logger (when they are imported,
    which commands defer) and still propagate to the root logger, so each of their warnings came out twice;
    the root handler now skips records a library handler has printed already.
    """
    logging.basicConfig(format=LOG_FORMAT, level=level)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _PrintedByLibrary) for f in handler.filters):
            handler.addFilter(_PrintedByLibrary())
    retries = logging.getLogger(_RETRY_LOGGER)
    if not any(isinstance(f, _OnceEach) for f in retries.filters):
        retries.addFilter(_OnceEach())
    # accelerate reports every file of every checkpoint at INFO; keep its warnings only.
    logging.getLogger("accelerate").setLevel(logging.WARNING)


class _PrintedByLibrary(logging.Filter):
    """Drops a record at the root handler when a handler of a logger on its way up has printed it already."""

    def filter(self, record: logging.LogRecord) -> bool:
        logger = logging.getLogger(record.name)
        while logger.parent is not None:  # the root logger has no parent
            if logger.handlers:
                return False
            if not logger.propagate:
                break
            logger = logger.parent
        return True


class _OnceEach(logging.Filter):
    """Passes a message the first time its text, numbers aside, is seen ("Retrying in 1s [Retry 1/5]")."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        shape = re.sub(r"\d+", "#", record.getMessage())
        if shape in self.seen:
            return False
        self.seen.add(shape)
        return True
