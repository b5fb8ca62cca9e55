"""
``python benchmarks/atari_report.py [options]``: the Atari tables and figure (and --snapshot of runs still training).
The code is :mod:`reporting.atari_report` (``python -m reporting atari-report``); this file keeps the command that
the results pages name next to their tables working.
"""

import os
import sys

if not __package__:  # run as a file: import the packages from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting.atari_report import main

if __name__ == "__main__":
    sys.exit(main())
