"""
A plot in the style of the paper's Figure 4: single path (``trpo_ext``), vine (``vine_trpo``) and the natural gradient
with a fixed step (``natural_pg``) on Swimmer, Hopper and Walker2d, one panel per task, from the benchmark matrix's
result files (``benchmarks/matrix.py``; curves as in ``reporting/matrix_report.py``: mean over seeds with a ±1 std band).

    python -m reporting figure4                     # writes benchmarks/results/figure4.png
    python -m reporting figure4 --readme            # and its table into README.md between the figure4 markers

The paper trained each method for a fixed number of policy iterations with batches of 50K-1M simulator steps; here
every method gets the same simulator-step budget as the matrix cells (1M steps on SB3-size batches). The x axis is
simulator steps (the vine's trunk and branch steps together).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

if not __package__:  # run as a file, python reporting/figure4.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting import matrix_report
from reporting.results_io import ROOT
from reporting.sections import README

TASKS = ("Swimmer-v5", "Hopper-v5", "Walker2d-v5")
ALGOS = {"trpo_ext": "single path (TRPO)", "vine_trpo": "vine (TRPO)", "natural_pg": "natural gradient, fixed step"}


def plot(results: str, path: str, tasks: Sequence[str] = TASKS) -> list[str]:
    """
    Draw one panel per task with each algorithm present in ``results``.

    :param results: the matrix's result folder
    :param path: the PNG to write
    :param tasks: the env ids, one panel each
    :return: the lines of a legend-like summary: task, algorithm, number of seeds
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    found = matrix_report.load(results, tasks)
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.8))
    summary = []
    for axis, task in zip(axes, tasks, strict=True):
        for algo, label in ALGOS.items():
            cells = found.get(task, {}).get(algo)
            if not cells:
                continue
            steps, mean, std = matrix_report.curves(cells)
            (line,) = axis.plot(steps, mean, label=f"{label} (n={len(cells)})")
            axis.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
            summary.append(f"{task}: {algo}, {len(cells)} seeds")
        axis.set_title(task)
        axis.set_xlabel("simulator steps")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0].set_ylabel("evaluation return (deterministic)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return summary


def table(results: str, tasks: Sequence[str] = TASKS) -> str:
    """
    The numbers behind the figure: per task and method, the return at 25% and 50% of the budget, the final return and
    the area under the curve (mean ± std over seeds, as in ``reporting/matrix_report.py``).

    :param results: the matrix's result folder
    :param tasks: the env ids
    :return: a markdown table
    """
    found = matrix_report.load(results, tasks)
    lines = [
        "| task | method | seeds | 25% | 50% | final | AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for task in tasks:
        for algo, label in ALGOS.items():
            cells = found.get(task, {}).get(algo)
            if not cells:
                continue
            summary = matrix_report.summarize(cells)
            values = [stat.text() for stat in summary["at"]] + [summary["auc"].text()]
            lines.append(f"| {task} | {label} (`{algo}`) | {len(cells)} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results", "matrix"))
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "figure4.png"))
    parser.add_argument("--readme", action="store_true", help="write the table into README.md between its markers")
    args = parser.parse_args(argv)
    for line in plot(args.results, args.out):
        print(line)
    print(f"wrote {args.out}")
    text = table(args.results)
    print(text)
    if args.readme:
        matrix_report.write_readme(
            "Made by `python benchmarks/figure4.py --readme` from the matrix files (budgets and evaluations as in the "
            "matrix tables; mean ± std over seeds):\n\n" + text,
            README,
            "figure4",
        )


if __name__ == "__main__":
    main()
