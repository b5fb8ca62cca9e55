"""
``python benchmarks/vine_vs_single.py [options]``: the vine against single path. The code is
:mod:`reporting.vine_vs_single` (``python -m reporting vine-vs-single``); this file keeps the command that the
results pages name next to their tables working.
"""

import os
import sys

if not __package__:  # run as a file: import the packages from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting.vine_vs_single import main

if __name__ == "__main__":
    sys.exit(main())
