"""
Vine against single path per simulator step and per policy update, from the benchmark matrix's files.

    python -m reporting vine-vs-single              # print the table, write benchmarks/results/vine_vs_single.png
    python -m reporting vine-vs-single --readme     # and write the table into README.md between its markers

For every env where the matrix has both ``trpo_ext`` and ``vine_trpo`` cells: the final return and the area under the
curve at the same simulator-step budget, the number of policy updates each made (budget / simulator steps per
iteration from the cell's YAML entry: ``n_envs x n_steps`` for single path, ``n_envs x n_steps + N x K x m`` for the
vine, an upper bound on the vine's steps, since a branch that ends early takes fewer), and single path's return after
as many updates as the vine made in its whole budget (its last evaluation at or before that many steps). The figure
plots the return against policy updates.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

if not __package__:  # run as a file, python reporting/vine_vs_single.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks.matrix_cells import config_entry
from reporting import matrix_report
from reporting.results_io import ROOT
from reporting.sections import README

SINGLE, VINE = "trpo_ext", "vine_trpo"


def steps_per_iteration(entry: dict[str, Any], vine: bool) -> int:
    """
    :param entry: the YAML entry the cell trained with
    :param vine: whether it is a vine entry (branches counted)
    :return: simulator steps per policy update
    """
    trunk = int(entry.get("n_envs", 1)) * int(entry.get("n_steps", 2048))
    if not vine:
        return trunk
    return trunk + int(entry["n_rollout_states"]) * int(entry["n_actions_per_state"]) * int(entry["rollout_length"])


def compare(found: dict[str, dict[str, list[dict[str, Any]]]], entries: dict[tuple[str, str], dict[str, Any]]) -> str:
    """
    :param found: ``{env: {algo: [cell, ...]}}`` (``reporting/matrix_report.py``'s ``load``)
    :param entries: the YAML entry of each ``(algo, env)``
    :return: the markdown table
    """
    lines = [
        "| env | budget | seeds (single / vine) | updates (single / vine) | final: single / vine | AUC: single / vine "
        "| single path after the vine's number of updates |",
        "|---|---|---|---|---|---|---|",
    ]
    for env, algos in found.items():
        if SINGLE not in algos or VINE not in algos:
            continue
        single, vine = algos[SINGLE], algos[VINE]
        budget = matrix_report.budget_of(single + vine)
        per_single = steps_per_iteration(entries[(SINGLE, env)], vine=False)
        per_vine = steps_per_iteration(entries[(VINE, env)], vine=True)
        vine_updates = budget // per_vine
        single_summary, vine_summary = matrix_report.summarize(single), matrix_report.summarize(vine)
        at_vine_updates = matrix_report.Stat.of([matrix_report.value_at(cell, vine_updates * per_single) for cell in single])
        lines.append(
            f"| {env} | {matrix_report.steps_text(budget)} | {len(single)} / {len(vine)} | {budget // per_single} / "
            f"{vine_updates} | {single_summary['at'][-1].text()} / {vine_summary['at'][-1].text()} | "
            f"{single_summary['auc'].text()} / {vine_summary['auc'].text()} | {at_vine_updates.text()} |"
        )
    return "\n".join(lines)


def plot(found: dict[str, dict[str, list[dict[str, Any]]]], entries: dict[tuple[str, str], dict[str, Any]], path: str) -> None:
    """Return against policy updates, one panel per env with both methods."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = [env for env, algos in found.items() if SINGLE in algos and VINE in algos]
    if not envs:
        return
    figure, axes = plt.subplots(1, len(envs), figsize=(4.2 * len(envs), 3.5), squeeze=False)
    for axis, env in zip(axes[0], envs, strict=True):
        for algo, label in ((SINGLE, "single path"), (VINE, "vine")):
            steps, mean, std = matrix_report.curves(found[env][algo])
            updates = np.asarray(steps) / steps_per_iteration(entries[(algo, env)], vine=algo == VINE)
            (line,) = axis.plot(updates, mean, label=f"{label} (n={len(found[env][algo])})")
            axis.fill_between(updates, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        axis.set_title(env, fontsize=9)
        axis.set_xlabel("policy updates")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("evaluation return")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results", "matrix"))
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "vine_vs_single.png"))
    parser.add_argument("--readme", action="store_true", help="write the table into README.md between its markers")
    args = parser.parse_args(argv)
    found = {env: algos for env, algos in matrix_report.load(args.results).items() if SINGLE in algos and VINE in algos}
    found = {env: found[env] for env in matrix_report.ordered(list(found), matrix_report.ENV_ORDER)}
    entries = {(algo, env): config_entry(algo, env) for env in found for algo in (SINGLE, VINE)}
    text = compare(found, entries)
    plot(found, entries, args.out)
    print(text)
    if args.readme:
        matrix_report.write_readme(
            "Made by `python benchmarks/vine_vs_single.py --readme` from the matrix files (each method's YAML; mean ± "
            "std over seeds; updates from the YAML entries):\n\n" + text,
            README,
            "vine-vs-single",
        )


if __name__ == "__main__":
    main()
