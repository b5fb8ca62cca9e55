"""
``python benchmarks/figure4.py [options]``: the paper's Figure 4 comparison. The code is :mod:`reporting.figure4`
(``python -m reporting figure4``); this file keeps the command that the results pages name next to their tables
working.
"""

import os
import sys

if not __package__:  # run as a file: import the packages from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting.figure4 import main

if __name__ == "__main__":
    sys.exit(main())
