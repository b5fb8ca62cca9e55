"""
The maskable table (``python benchmarks/maskable.py --readme``, between the ``maskable`` markers of the results page
and of ``docs/modules/maskable.md``): MaskableTRPO against MaskablePPO and the unmasked TRPO per task, the IQM over
seeds with bootstrap intervals and verdicts (:mod:`reporting.intervals`), from the result files that
``benchmarks/maskable.py`` writes.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping, Sequence
from typing import Any

from reporting.intervals import difference_interval, iqm_interval, verdict
from reporting.results_io import read_result


def load(results: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """:return: (task, algo) -> the runs' data, by seed"""
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(glob.glob(os.path.join(results, "*.json"))):
        data = read_result(path)["data"]
        found.setdefault((data["task"], data["algo"]), []).append(data)
    return found


def _cell(runs: list[dict[str, Any]], key: str) -> str:
    return iqm_interval([run[key] for run in runs]).text(lambda value: f"{value:.1f}") if runs else "-"


def _versus(ours: list[dict[str, Any]], other: list[dict[str, Any]], key: str) -> str:
    if not ours or not other:
        return "-"
    difference = difference_interval([run[key] for run in ours], [run[key] for run in other])
    return f"{verdict(difference)} ({difference.text(lambda value: f'{value:+.1f}')})"


def table(
    found: dict[tuple[str, str], list[dict[str, Any]]],
    tasks: Mapping[str, Mapping[str, Any]],
    algos: Sequence[str],
    n_steps: int,
) -> str:
    """
    :param found: (task, algo) -> the runs' data (:func:`load`)
    :param tasks: the runner's tasks: each one's ``shape`` (its action space) and ``budget``
    :param algos: the table's columns, MaskableTRPO first, then MaskablePPO and the unmasked TRPO
    :param n_steps: the steps every algorithm collects per update
    :return: the markdown section: final return per task and algorithm, and MaskableTRPO's verdicts
    """
    lines = [
        "Final return (deterministic episodes after the budget: 20 of SlotScheduling, 5 of the 100-step identity envs; "
        "masked algorithms evaluated with the env's masks, "
        "the unmasked TRPO without) as the IQM over seeds [95% bootstrap CI]; verdict of MaskableTRPO against each "
        "other algorithm from the interval of the IQM difference (ahead / behind where it excludes 0, else even), "
        "the difference in parentheses; AUC: the same verdicts on a run's mean evaluation return over its 5 evaluations "
        f"(how fast it learns). Every algorithm at its class defaults with n_steps={n_steps} (and gamma 0.1 "
        "on the identity envs, as sb3-contrib's test); one torch thread. Made by `python benchmarks/maskable.py "
        "--seeds 0 1 2` then `python benchmarks/maskable.py --readme`; result files in "
        "[`benchmarks/results/maskable/`](benchmarks/results/maskable/).",
        "",
        "| task | action space | budget | seeds | MaskableTRPO | MaskablePPO | TRPO (unmasked) | MaskableNaturalPG "
        "| MaskableTRPO vs MaskablePPO | MaskableTRPO vs TRPO | AUC: vs MaskablePPO | AUC: vs TRPO |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, spec in tasks.items():
        runs = {algo: found.get((task, algo), []) for algo in algos}
        if not any(runs.values()):
            continue
        seeds = min(len(r) for r in runs.values() if r)
        cells = [_cell(runs[algo], "final") for algo in algos]
        pairs = [(key, other) for key in ("final", "auc") for other in ("MaskablePPO", "TRPO")]
        versus = [_versus(runs["MaskableTRPO"], runs[other], key) for key, other in pairs]
        row = [task, spec["shape"], f"{spec['budget'] // 1000}K", str(seeds), *cells, *versus]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
