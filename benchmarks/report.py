"""
``python benchmarks/report.py [options]``: the matrix's tables and learning curves. The code is
:mod:`reporting.matrix_report` (``python -m reporting matrix-report``); this file keeps the command that the results
pages name next to their tables working.
"""

import os
import sys

if not __package__:  # run as a file: import the packages from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting.matrix_report import main

if __name__ == "__main__":
    sys.exit(main())
