"""
The vine study's command line: ``python -m vine_study [options]`` (or ``python vine_study``); what it does:
:mod:`vine_study`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch as th
from threadpoolctl import threadpool_limits

if not __package__:  # run as a folder, python vine_study: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import vine_study
from reporting.results_io import ROOT
from vine_study.plan import PLANS
from vine_study.report import report, write_readme
from vine_study.study import run_study

RESULTS = os.path.join(ROOT, "benchmarks", "results", "vine_study")
QUICK_RESULTS = os.path.join(ROOT, "benchmarks", "results", "vine_study_quick")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vine_study", description=vine_study.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--checkpoints", nargs="+", default=["early", "mid"], choices=["early", "mid"])
    parser.add_argument("--repeats", type=int, default=None, help="repeats per configuration (default: the task's plan)")
    parser.add_argument("--only", nargs="+", default=[], help="run only configurations whose names start with these")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (results under vine_study_quick/)")
    parser.add_argument("--results", default=None, help="results folder (default: benchmarks/results/vine_study)")
    parser.add_argument("--report", action="store_true", help="print the tables, draw the plots, write report.md")
    parser.add_argument("--readme", action="store_true", help="--report, and the summary into the results page's markers")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    th.set_num_threads(1)
    threadpool_limits(1)
    results = args.results or (QUICK_RESULTS if args.quick else RESULTS)
    if args.report or args.readme:
        text = report(results)
        print(text)
        with open(os.path.join(results, "report.md"), "w") as f:
            f.write(text.replace("#### ", "### ") + "\n")
        if args.readme:
            write_readme(report(results, plot=False, detail=False))
        return
    run_study(args.tasks, args.checkpoints, results, args.quick, args.repeats, args.only)


if __name__ == "__main__":
    main()
