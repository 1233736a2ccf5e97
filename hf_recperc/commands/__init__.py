"""The bodies of the command-line scripts (``scripts/*.py`` and the ``recperc-*`` console entry points)."""
