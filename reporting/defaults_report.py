"""
The class-defaults table: each algorithm as a user without the zoo runs it, ``Cls("MlpPolicy", env_id, seed=s)``
(``benchmarks/train_defaults.py``), ours against sb3-contrib's ``TRPO``, from the matrix's ``*-defaults`` cells.

    python benchmarks/matrix.py --preset defaults --workers 2    # train the cells (9 tasks x 3 seeds per algorithm)
    python -m reporting defaults-report                         # print the tables
    python -m reporting defaults-report --readme                # write them into README.md and the docs' results page

Reads ``benchmarks/results/matrix/{algo}-defaults*/{env}/seed_{S}.json`` (whichever exist). Per task and algorithm,
over its seeds: the final return (each seed's last evaluation) and the area under the curve (AUC: each seed's mean of
its evaluation returns over all its evaluations), as the interquartile mean with a 95% bootstrap confidence interval
(``reporting/intervals.py``; below 3 seeds the mean, with no interval), and the verdict against sb3-contrib's
defaults: ``ahead`` / ``behind`` where the interval of the IQM difference excludes 0, else ``even``; ``mean only``
below 3 seeds of either.

Two sections: ``defaults`` (the headline, ours against sb3-contrib, with the 0.1.0 defaults -> now column; the README
front page and the docs' results page) and ``defaults-detail`` (every class-defaults algorithm; the docs page only).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

if not __package__:  # run as a file, python reporting/defaults_report.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks.matrix_cells import PRESETS, RESULTS
from reporting import intervals, matrix_report
from reporting.sections import DOCS_RESULTS, README, replace_readme_section

OURS = "trpo_ext-defaults"
CONTRIB = "sb3-contrib-defaults"
BEFORE = "trpo_ext-defaults-0.1.0"
# discrete or 1-D action spaces (d = 1): 0.01 and 0.1 per action dimension are the 0.1.0 defaults themselves
UNCHANGED = ("CartPole-v1", "Acrobot-v1", "Pendulum-v1")
DAMPED = "trpo_ext-defaults-damped"
DETAIL = (OURS, BEFORE, DAMPED, "natural_pg-defaults", "vine_trpo-defaults", CONTRIB)
"""The algorithms of the detail table, in its order (pilots such as ``trpo_ext-defaults-cg10`` are left out)."""
VINE = "vine_trpo-defaults"
PRESET = PRESETS["defaults"]
COMMAND = "python benchmarks/matrix.py --preset defaults --workers 2"
BEFORE_COMMAND = f"python benchmarks/matrix.py --preset defaults --algos {BEFORE} --workers 2"
REPORT_COMMAND = "python benchmarks/defaults_report.py --readme"
METRICS = ("final", "AUC")


def load(results: str = RESULTS) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``{env: {algo: [cell, ...]}}`` of the class-defaults algorithms of :data:`DETAIL` (whichever cells exist)."""
    found = matrix_report.load(results)
    kept = {env: {algo: cells for algo, cells in algos.items() if algo in DETAIL} for env, algos in found.items()}
    return {env: algos for env, algos in kept.items() if algos}


def tasks(found: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    """The preset's tasks in its order (whether they have cells yet or not), then any other task with cells."""
    return list(PRESET["envs"]) + sorted(env for env in found if env not in PRESET["envs"])


def runs(cells: Sequence[dict[str, Any]], metric: str) -> np.ndarray:
    """One value per seed: its final return or its AUC."""
    values = [matrix_report.final(cell) if metric == "final" else matrix_report.auc(cell) for cell in cells if cell["mean"]]
    return np.asarray([value for value in values if value is not None], dtype=float)


def budget_text(env: str, cells: Sequence[dict[str, Any]]) -> str:
    budget = matrix_report.budget_of(cells) if cells else PRESET["budgets"].get(env)
    return matrix_report.steps_text(budget) if budget else "-"


def provenance(found: dict[str, dict[str, list[dict[str, Any]]]], algos: Sequence[str]) -> tuple[str, str, str]:
    """The machine classes, the dates (first to last) and the commits of the cells of ``algos``."""
    cells = [cell for env in found for algo in algos for cell in found[env].get(algo, [])]
    if not cells:
        return "no cells yet", "-", "-"
    dates = sorted(cell["date"][:10] for cell in cells)
    date = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    commits = sorted({(cell.get("git") or {}).get("commit") or "unknown" for cell in cells})
    return matrix_report.join_unique(sorted(cell["machine"] for cell in cells)), date, ", ".join(c[:8] for c in commits)


def headline(found: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """The ``defaults`` section: ours against sb3-contrib at the class defaults, per task and over tasks."""
    machines, dates, _ = provenance(found, (OURS, CONTRIB, BEFORE))
    lines = [
        'Class defaults, ours against sb3-contrib\'s: `TRPO("MlpPolicy", env_id, seed=s).learn(budget)` of each '
        "library, no YAML, no normalization (`benchmarks/train_defaults.py`), 10 deterministic evaluation episodes "
        "every 5% of the budget. Final return and AUC (a seed's mean evaluation return over all its evaluations) as "
        "the IQM over seeds [95% bootstrap CI]; `[n/a]`: fewer than 3 seeds, the mean and no interval. Verdict: "
        "ahead / behind where the interval of the IQM difference excludes 0, else even (`mean only` below 3 seeds). "
        f"Made by `{COMMAND}` (the 0.1.0 column: `{BEFORE_COMMAND}`) then `{REPORT_COMMAND}`; {machines}, one torch "
        f"thread per run; {dates}.",
        "",
        "| task | budget | seeds (ours / sb3-contrib) | final: ours | final: sb3-contrib | final | AUC: ours "
        "| AUC: sb3-contrib | AUC | final, 0.1.0 defaults -> now |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    paired: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {metric: {} for metric in METRICS}
    counts: dict[str, dict[str, int]] = {metric: {} for metric in METRICS}
    reaches = 0
    for env in tasks(found):
        algos = found.get(env, {})
        ours, theirs = algos.get(OURS, []), algos.get(CONTRIB, [])
        row = [env, budget_text(env, ours + theirs), f"{len(ours)} / {len(theirs)}"]
        verdicts = []
        for metric in METRICS:
            x, y = runs(ours, metric), runs(theirs, metric)
            result = intervals.compare(x, y) if x.size and y.size else "-"
            row += [
                matrix_report.interval_text(intervals.iqm_interval(x)),
                matrix_report.interval_text(intervals.iqm_interval(y)),
                result,
            ]
            verdicts.append(result)
            if min(x.size, y.size) >= intervals.MIN_SEEDS:
                paired[metric][env] = (x, y)
                counts[metric][result] = counts[metric].get(result, 0) + 1
        if env in paired["final"] and all(result in (intervals.AHEAD, intervals.EVEN) for result in verdicts):
            reaches += 1
        before = runs(algos.get(BEFORE, []), "final")
        now = runs(ours, "final")
        if env in UNCHANGED:
            row.append("unchanged (d = 1: the same settings)")
        elif before.size and now.size:
            change = intervals.compare(now, before)
            was, is_now = matrix_report.fmt(float(intervals.iqm(before))), matrix_report.fmt(float(intervals.iqm(now)))
            row.append(f"{was} -> {is_now} ({change})")
        else:
            row.append("-")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", *summary(paired, counts, reaches, len(tasks(found)))]
    return "\n".join(lines)


def summary(
    paired: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]],
    counts: dict[str, dict[str, int]],
    reaches: int,
    n_tasks: int,
) -> list[str]:
    """Over the tasks with 3 seeds of both: the verdicts, the average P(ours > sb3-contrib), the aggregate IQMs."""
    n_paired = len(paired["final"])
    if not n_paired:
        return [
            f"Over tasks: none of the {n_tasks} tasks has {intervals.MIN_SEEDS} seeds of both yet, so no aggregate "
            "(the IQM of min-max normalized scores, P(ours > sb3-contrib)) is given."
        ]
    lines = [
        f"Over the {n_paired} of {n_tasks} tasks with {intervals.MIN_SEEDS} or more seeds of both (stratified bootstrap: "
        "seeds resampled within each task; normalized score: 0 = the task's lowest run of either library, 1 = its "
        f"highest). Ours behind sb3-contrib in neither final return nor AUC: {reaches} of these {n_paired} tasks.",
        "",
        f"| over {n_paired} tasks | final return | AUC |",
        "|---|---|---|",
    ]
    row = ["verdicts: ahead / even / behind"]
    for metric in METRICS:
        got = counts[metric]
        row.append(" / ".join(str(got.get(result, 0)) for result in (intervals.AHEAD, intervals.EVEN, intervals.BEHIND)))
    lines.append("| " + " | ".join(row) + " |")
    row = ["P(ours > sb3-contrib), mean over tasks [95% CI]"]
    for metric in METRICS:
        x = {env: pair[0] for env, pair in paired[metric].items()}
        y = {env: pair[1] for env, pair in paired[metric].items()}
        probability = intervals.aggregate_probability(x, y)
        row.append(f"{probability.text(lambda v: f'{v:.2f}')} ({intervals.verdict(probability, null=0.5)})")
    lines.append("| " + " | ".join(row) + " |")
    for index, name in enumerate(("ours", "sb3-contrib")):
        row = [f"IQM of normalized scores: {name} [95% CI]"]
        for metric in METRICS:
            scores = {
                "x": {env: pair[0] for env, pair in paired[metric].items()},
                "y": {env: pair[1] for env, pair in paired[metric].items()},
            }
            normalized = intervals.normalize(scores)["xy"[index]]
            row.append(intervals.aggregate_iqm(normalized).text(lambda v: f"{v:.2f}"))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def detail(found: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """The ``defaults-detail`` section: every class-defaults algorithm per task, each against sb3-contrib's."""
    machines, dates, commits = provenance(found, DETAIL)
    runner_commands = sorted(
        {cell.get("runner_command", "?") for algos in found.values() for cells in algos.values() for cell in cells}
    )
    lines = [
        "Every class-defaults algorithm, each against sb3-contrib's defaults on the same task and budget (IQM over "
        "seeds [95% bootstrap CI], verdicts as above). `trpo_ext-defaults-0.1.0` is our 0.1.0 defaults given "
        "explicitly (`target_kl=0.01`, `cg_damping=0.1` on the whole distribution, not per action dimension); "
        f"`{DAMPED}` is the class defaults with `damped_step_length=True` (the step length of sb3-contrib and of the "
        "paper's reference code), measured as a candidate default and not adopted (the comparison below the table). "
        "VineTRPO's budget counts simulator steps (trunk plus branches), so `vine_trpo-defaults` is compared at equal "
        "simulator steps, with fewer policy updates than single path. "
        f"Made by {'; '.join(f'`{command}`' for command in runner_commands) or f'`{COMMAND}`'} then "
        f"`{REPORT_COMMAND}`; {machines}; {dates}; commit {commits}. Training command of a cell: "
        "`python benchmarks/train_defaults.py --algo ALGO --env ENV --seed S -n BUDGET --eval-freq BUDGET/20 "
        "--eval-episodes 10` (the 0.1.0 cells add `-params target_kl:0.01 cg_damping:0.1 damped_step_length:False`, "
        "the damped ones `-params damped_step_length:True`).",
        "",
        "| task | algorithm | seeds | final: IQM [95% CI] | final vs sb3-contrib | AUC: IQM [95% CI] | AUC vs sb3-contrib "
        "| wall s/run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for env in tasks(found):
        algos = found.get(env, {})
        if not algos:
            lines.append(f"| {env} | no cells yet | 0 | - | - | - | - | - |")
            continue
        for algo in DETAIL:
            if algo not in algos:
                continue
            cells = algos[algo]
            row = [env, f"`{algo}`", str(len(cells))]
            for metric in METRICS:
                x = runs(cells, metric)
                row.append(matrix_report.interval_text(intervals.iqm_interval(x)))
                if algo == CONTRIB:
                    row.append("-")
                else:
                    y = runs(algos.get(CONTRIB, []), metric)
                    row.append(intervals.compare(x, y) if y.size else "no sb3-contrib cells")
            row.append(f"{np.mean([cell['wall_s'] for cell in cells]):,.0f}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines + ["", *candidate(found, DAMPED)])


def candidate(found: dict[str, dict[str, list[dict[str, Any]]]], algo: str) -> list[str]:
    """A candidate default against the current class defaults: per-task verdicts and ``P(candidate > defaults)``."""
    pairs = {
        metric: {
            env: (runs(algos[algo], metric), runs(algos[OURS], metric))
            for env, algos in found.items()
            if algo in algos and OURS in algos and min(len(algos[algo]), len(algos[OURS])) >= intervals.MIN_SEEDS
        }
        for metric in METRICS
    }
    n_tasks = len(pairs["final"])
    if not n_tasks:
        return [f"`{algo}` against `{OURS}`: no task has {intervals.MIN_SEEDS} seeds of both yet."]
    row_verdicts, row_probability = ["verdicts: ahead / even / behind"], [f"P(`{algo}` > `{OURS}`), mean [95% CI]"]
    notable = []
    for metric in METRICS:
        results = {env: intervals.compare(x, y) for env, (x, y) in pairs[metric].items()}
        counts = [
            sum(result == wanted for result in results.values())
            for wanted in (intervals.AHEAD, intervals.EVEN, intervals.BEHIND)
        ]
        row_verdicts.append(" / ".join(map(str, counts)))
        notable += [f"{result} on {env} ({metric})" for env, result in results.items() if result != intervals.EVEN]
        probability = intervals.aggregate_probability(
            {env: pair[0] for env, pair in pairs[metric].items()}, {env: pair[1] for env, pair in pairs[metric].items()}
        )
        row_probability.append(f"{probability.text(lambda v: f'{v:.2f}')} ({intervals.verdict(probability, null=0.5)})")
    return [
        f"The candidate `{algo}` against the class defaults `{OURS}` on the {n_tasks} tasks with "
        f"{intervals.MIN_SEEDS} or more seeds of both (IQM difference per task, stratified bootstrap over tasks): "
        + ("; ".join(notable) if notable else "even on every task in both final return and AUC")
        + ".",
        "",
        f"| `{algo}` vs `{OURS}`, over {n_tasks} tasks | final return | AUC |",
        "|---|---|---|",
        "| " + " | ".join(row_verdicts) + " |",
        "| " + " | ".join(row_probability) + " |",
    ]


def write(headline_text: str, detail_text: str, readme: str = README, docs: str | None = None) -> None:
    """The headline into ``readme`` and ``docs`` (where each has the ``defaults`` markers), the detail into ``docs``."""
    replace_readme_section(headline_text, "defaults", readme, docs)
    replace_readme_section(detail_text, "defaults-detail", readme, docs)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=RESULTS, help="result folder (default: benchmarks/results/matrix)")
    parser.add_argument("--readme", action="store_true", help=f"write the sections into README.md and {DOCS_RESULTS}")
    parser.add_argument("--readme-path", default=README, help=argparse.SUPPRESS)
    parser.add_argument("--docs-path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    found = load(args.results)
    headline_text, detail_text = headline(found), detail(found)
    print(headline_text + "\n\n" + detail_text)
    if args.readme:
        write(headline_text, detail_text, args.readme_path, args.docs_path)


if __name__ == "__main__":
    main()
