"""``ditlab`` as a script, with every float in ``metrics.csv`` written in full (``repr``).

The CSV normally keeps 6 significant digits; the reliability tests compare losses bit for bit, so
their subprocesses run the CLI through this file: ``python exact_cli.py train --preset ...``.
"""
import sys

from ditlab.training import logger

logger._fmt = lambda value: repr(value) if isinstance(value, float) else value

if __name__ == "__main__":
    from ditlab.cli import main

    sys.exit(main(sys.argv[1:]))
