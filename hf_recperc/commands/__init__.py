"""Entry points of the console scripts (``recperc-report``); each ``main(argv=None) -> int``."""
