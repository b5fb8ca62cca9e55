"""
``python benchmarks/defaults_report.py [options]``: the class-defaults tables. The code is
:mod:`reporting.defaults_report` (``python -m reporting defaults-report``); this file keeps the command that the
results pages name next to their tables working.
"""

import os
import sys

if not __package__:  # run as a file: import the packages from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting.defaults_report import main

if __name__ == "__main__":
    sys.exit(main())
