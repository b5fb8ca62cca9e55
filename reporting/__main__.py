"""
One entry point for the report tools: ``python -m reporting TOOL [options]`` (run in the repository root).

    python -m reporting                              # list the tools
    python -m reporting defaults-report --readme     # = python reporting/defaults_report.py --readme
    python -m reporting sections --docs              # the README's generated sections into the docs' results page

Each tool is a module of this package with a ``main(argv)``, run as if started directly. A tool reads result files
under ``benchmarks/results/`` and prints its tables; with ``--readme`` it writes them between their markers in the
README and the docs (:mod:`reporting.sections`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

if not __package__:  # run as a file, python reporting/__main__.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting import tool_entry

TOOLS = {
    "matrix-report": ("reporting.matrix_report", "the matrix's tables (IQM and intervals) and learning curves"),
    "defaults-report": ("reporting.defaults_report", "the class-defaults table, ours vs sb3-contrib"),
    "figure4": ("reporting.figure4", "the paper's Figure 4 comparison from the matrix files"),
    "vine-vs-single": ("reporting.vine_vs_single", "the vine against single path per simulator step and per update"),
    "speed-report": ("reporting.speed_report", "the speed tables of the docs from the speed result files"),
    "atari-report": ("reporting.atari_report", "the Atari scores, curves and before/after table from the Atari result files"),
    "ray-report": ("reporting.ray_report", "the Ray page's measured numbers and scaling projection"),
    "sections": ("reporting.sections", "copy the README's generated sections into the docs' results page (--docs)"),
}
"""Tool name -> (its module, what it does)."""


def main(argv: Sequence[str]) -> int:
    """
    :param argv: ``TOOL [options]``; nothing, ``-h`` or ``--help`` lists the tools
    :return: the tool's exit status (0 for the list, 2 for an unknown tool)
    """
    return tool_entry.main(__doc__ or "", TOOLS, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
