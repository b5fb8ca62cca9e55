"""
Turn the benchmark matrix's result files (``benchmarks/matrix.py``) into markdown tables and PNG learning curves.

    python -m reporting matrix-report                  # print the tables, write benchmarks/results/matrix/{env}.png
    python -m reporting matrix-report --readme         # also write the tables between the matrix markers (docs results page)
    python -m reporting matrix-report --envs Hopper-v5 --no-plots

Reads ``benchmarks/results/matrix/{algo}/{env}/seed_{S}.json``. Per env and algorithm, over the seeds present:
- the evaluation return at 25% and 50% of the budget (each seed's last evaluation at or before that step) and the
  final one (each seed's last evaluation: rl-zoo3 finishes the last rollout, so it can lie a little past the budget,
  e.g. 52,500 of 50,000 steps with 2 x 2048-step rollouts), as mean +- sample standard deviation (n - 1) over seeds;
- the area under the curve: each seed's mean of its evaluation returns over all its evaluations, then mean +- std
  over seeds;
- n, the number of seeds;
- in the summary, the final return and the AUC also as the interquartile mean with a 95% bootstrap confidence
  interval, and each of ours against sb3-contrib: ahead / behind where the interval of the IQM difference excludes
  0, else even (``reporting/intervals.py``).
The class-defaults cells (``*-defaults*``) are left out: ``reporting/defaults_report.py`` reports them.
Each evaluation return is the mean of the cell's deterministic evaluation episodes. The curves show the mean over
seeds with a shaded +-1 std band.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

if not __package__:  # run as a file, python reporting/matrix_report.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks.matrix_cells import DEFAULTS, RESULTS
from reporting import intervals
from reporting.results_io import ROOT, read_result
from reporting.sections import README, replace_readme_section

FRACTIONS = (0.25, 0.5, 1.0)
ALGO_ORDER = (
    "trpo_ext",
    "trpo_ext-equal-tr",
    "trpo_ext-fisher-all",
    "trpo_ext-contrib-engine",
    "natural_pg",
    "vine_trpo",
    "sb3-contrib",
)
CONTRIB = "sb3-contrib"
ENV_ORDER = (
    "CartPole-v1",
    "Acrobot-v1",
    "Pendulum-v1",
    "MountainCarContinuous-v0",
    "Hopper-v5",
    "Walker2d-v5",
    "Swimmer-v5",
    "HalfCheetah-v5",
)


def load(results: str = RESULTS, envs: Sequence[str] | None = None) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """
    :return: ``{env: {algo: [cell, ...]}}`` (cells as :func:`cell_of` gives them) sorted by seed; unreadable files are
        reported and left out
    """
    found: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for path in sorted(glob.glob(os.path.join(results, "*", "*", "seed_*.json"))):
        try:
            cell = cell_of(read_result(path))
        except (OSError, ValueError, KeyError) as error:
            print(f"warning: skipping {path}: {error}", file=sys.stderr)
            continue
        if envs and cell["env"] not in envs:
            continue
        found.setdefault(cell["env"], {}).setdefault(cell["algo"], []).append(cell)
    for algos in found.values():
        for cells in algos.values():
            cells.sort(key=lambda cell: cell["seed"])
    return found


def cell_of(result: dict[str, Any]) -> dict[str, Any]:
    """
    A matrix cell as the tables read it: the result's data (``command``: the cell's training command) with its
    machine, date, commit and versions beside, and the runner's command as ``runner_command`` (the flat layout the
    runner wrote before the schema).

    :param result: a matrix result (:func:`~reporting.results_io.read_result`)
    :return: the cell
    """
    provenance = {key: result[key] for key in ("machine", "date", "git", "versions") if result[key] is not None}
    runner = {"runner_command": result["command"]} if result["command"] is not None else {}
    return {**result["data"], **provenance, **runner}


def ordered(keys: Sequence[str], order: Sequence[str]) -> list[str]:
    return [key for key in order if key in keys] + sorted(key for key in keys if key not in order)


def value_at(cell: dict[str, Any], step: float) -> float | None:
    """The cell's evaluation return at its last evaluation at or before ``step`` (``None`` if none is)."""
    steps = np.asarray(cell["steps"], dtype=float)
    index = np.searchsorted(steps, step, side="right") - 1
    return None if index < 0 else float(cell["mean"][index])


def final(cell: dict[str, Any]) -> float | None:
    """The cell's last evaluation (VineTRPO's last one can lie a little past the budget: see benchmarks/matrix.py)."""
    return float(cell["mean"][-1]) if cell["mean"] else None


def auc(cell: dict[str, Any]) -> float:
    """Area under the curve as the mean of the evaluation returns over all the cell's evaluations."""
    return float(np.mean(cell["mean"]))


@dataclass
class Stat:
    mean: float
    std: float  # sample standard deviation over seeds (n - 1); nan for one seed
    n: int

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Stat:
        present = np.asarray([v for v in values if v is not None], dtype=float)
        if present.size == 0:
            return cls(float("nan"), float("nan"), 0)
        std = float(np.std(present, ddof=1)) if present.size > 1 else float("nan")
        return cls(float(np.mean(present)), std, int(present.size))

    def text(self, bold: bool = False) -> str:
        if self.n == 0:
            return "-"
        mean = fmt(self.mean)
        if bold:
            mean = f"**{mean}**"
        return mean if np.isnan(self.std) else f"{mean} ± {fmt(self.std, like=self.mean)}"


def fmt(value: float, like: float | None = None) -> str:
    """Three significant digits or more (no decimals from 100 on); ``like``: use the decimals of that value."""
    size = abs(value if like is None else like)
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def interval_text(interval: intervals.Interval) -> str:
    """``IQM [low, high]`` with the decimals of the IQM; ``IQM [n/a]`` without an interval; ``-`` without seeds."""
    return interval.text(lambda value: fmt(value, like=interval.value))


def budget_of(cells: Sequence[dict[str, Any]]) -> int:
    return max(int(cell["budget"]) for cell in cells)


def summarize(cells: Sequence[dict[str, Any]], fractions: Sequence[float] = FRACTIONS) -> dict[str, Any]:
    """Per-algorithm statistics of one env: the values at each fraction of the budget, and the AUC."""
    budget = budget_of(cells)
    return {
        "seeds": [cell["seed"] for cell in cells],
        "budget": budget,
        "at": [
            Stat.of([value_at(cell, fraction * budget) if fraction < 1 else final(cell) for cell in cells])
            for fraction in fractions
        ],
        "auc": Stat.of([auc(cell) for cell in cells]),
        "wall_s": float(np.mean([cell["wall_s"] for cell in cells])),
    }


def steps_text(steps: float) -> str:
    if steps >= 1e6 and steps % 1e5 == 0:
        return f"{steps / 1e6:g}M"
    if steps >= 1e3 and steps % 100 == 0:
        return f"{steps / 1e3:g}K"
    return f"{steps:,.0f}"


def command_template(cell: dict[str, Any]) -> str:
    """The cell's training command with its seed replaced by ``S``."""
    return cell["command"].replace(f"--seed {cell['seed']} ", "--seed S ").replace(f"seed_{cell['seed']}", "seed_S")


def join_unique(values: Sequence[str]) -> str:
    unique = list(dict.fromkeys(values))
    return "; ".join(unique)


def env_table(
    env: str, algos: dict[str, list[dict[str, Any]]], fractions: Sequence[float] = FRACTIONS, images: str = "."
) -> str:
    """The markdown section of one env: heading, provenance, table, commands, plot (``images``: the PNGs' folder)."""
    names = ordered(list(algos), ALGO_ORDER)
    all_cells = [cell for name in names for cell in algos[name]]
    budget = budget_of(all_cells)
    summaries = {name: summarize(algos[name], fractions) for name in names}
    dates = sorted(cell["date"][:10] for cell in all_cells)
    date = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    commits = sorted({(cell.get("git") or {}).get("commit") or "unknown" for cell in all_cells})
    episodes = join_unique([str(cell.get("eval_episodes", "?")) for cell in all_cells])
    lines = [
        f"#### {env} ({steps_text(budget)} steps)",
        "",
        f"Made by `{join_unique([cell.get('runner_command', '?') for cell in all_cells])}` then "
        f"`python benchmarks/report.py`; {join_unique([cell['machine'] for cell in all_cells])}, one torch thread per "
        f"run; {date}; commit {', '.join(commit[:8] for commit in commits)}. Evaluation return: mean of {episodes} "
        "deterministic episodes; mean ± std over seeds (n - 1); AUC: mean over all evaluations.",
        "",
    ]
    header = ["algorithm", "seeds"]
    for fraction in fractions:
        label = f"{fraction:.0%} ({steps_text(fraction * budget)})"
        header.append("final" if fraction == 1.0 else label)
    header += ["AUC", "wall s/run"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # the best mean of each column in bold, when more than one algorithm is there to compare
    best_at = [max((s["at"][i].mean for s in summaries.values() if s["at"][i].n), default=None) for i in range(len(fractions))]
    best_auc = max(s["auc"].mean for s in summaries.values())
    for name in names:
        summary = summaries[name]
        row = [f"`{name}`", str(len(summary["seeds"]))]
        for i, stat in enumerate(summary["at"]):
            row.append(stat.text(bold=len(names) > 1 and stat.n > 0 and stat.mean == best_at[i]))
        row.append(summary["auc"].text(bold=len(names) > 1 and summary["auc"].mean == best_auc))
        row.append(f"{summary['wall_s']:,.0f}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Training commands (S = seed):", ""]
    for name in names:
        lines.append(f"- `{name}`: `{join_unique([command_template(cell) for cell in algos[name]])}`")
    lines += ["", f"![{env} learning curves]({images}/{env}.png)", ""]
    return "\n".join(lines)


def curves(cells: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Mean and std over seeds of the evaluation curves; seeds evaluated at other steps are interpolated onto the steps
    of the seed with the most evaluations, within the range every seed covers.

    :return: steps, mean, std (std 0 for a single seed)
    """
    grid = np.asarray(max((cell["steps"] for cell in cells), key=len), dtype=float)
    low = max(cell["steps"][0] for cell in cells)
    high = min(cell["steps"][-1] for cell in cells)
    grid = grid[(grid >= low) & (grid <= high)]
    values = np.stack([np.interp(grid, np.asarray(cell["steps"], float), np.asarray(cell["mean"], float)) for cell in cells])
    std = values.std(axis=0, ddof=1) if len(cells) > 1 else np.zeros(len(grid))
    return grid, values.mean(axis=0), std


def plot(env: str, algos: dict[str, list[dict[str, Any]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name in ordered(list(algos), ALGO_ORDER):
        steps, mean, std = curves(algos[name])
        (line,) = axis.plot(steps, mean, label=f"{name} (n={len(algos[name])})")
        axis.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    axis.set_title(f"{env}: evaluation return, mean ± std over seeds")
    axis.set_xlabel("environment steps")
    axis.set_ylabel("mean return (deterministic)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def summary_table(found: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """
    One row per env and algorithm: the seeds, the final return and the AUC as mean ± std and as IQM [95% bootstrap
    CI] over seeds (``reporting/intervals.py``; no interval below 3 seeds), and, for each of ours, the verdict
    against sb3-contrib on each (``ahead`` / ``behind`` where the interval of the IQM difference excludes 0, else
    ``even``; ``mean only`` below 3 seeds of either).
    """
    names = ordered(sorted({name for algos in found.values() for name in algos}), ALGO_ORDER)
    header = ["env", "algorithm", "seeds", "final: mean ± std", "final: IQM [95% CI]", "AUC: mean ± std", "AUC: IQM [95% CI]"]
    if CONTRIB in names:
        header.append("vs sb3-contrib: final / AUC")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for env in ordered(list(found), ENV_ORDER):
        algos = found[env]
        values = {
            name: {"final": [v for v in map(final, algos[name]) if v is not None], "auc": [auc(cell) for cell in algos[name]]}
            for name in names
            if name in algos
        }
        for name in values:
            row = [env, f"`{name}`", str(len(algos[name]))]
            for metric in ("final", "auc"):
                row += [Stat.of(values[name][metric]).text(), interval_text(intervals.iqm_interval(values[name][metric]))]
            if CONTRIB in names:
                if name == CONTRIB or CONTRIB not in values:
                    row.append("-")
                else:
                    row.append(" / ".join(intervals.compare(values[name][m], values[CONTRIB][m]) for m in ("final", "auc")))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def without_defaults(found: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The matrix without its class-defaults cells (``reporting/defaults_report.py`` reports those)."""
    kept = {env: {algo: cells for algo, cells in algos.items() if algo not in DEFAULTS} for env, algos in found.items()}
    return {env: algos for env, algos in kept.items() if algos}


def report(results: str = RESULTS, envs: Sequence[str] | None = None, plots: bool = True) -> str:
    """The markdown of every env with results; writes one PNG per env into ``results`` when ``plots``."""
    found = without_defaults(load(results, envs))
    if not found:
        raise SystemExit(f"no result files under {results}: run benchmarks/matrix.py first")
    has_contrib = any(CONTRIB in algos for algos in found.values())
    sections = [
        "Summary per env: the final return and the area under the curve (AUC: mean over all evaluations) of each "
        "seed, as mean ± std and as interquartile mean [95% bootstrap CI] over seeds (`benchmarks/intervals.py`; "
        "`[n/a]`: fewer than 3 seeds, no interval)."
        + (
            " Against sb3-contrib: ahead / behind where the interval of the IQM difference excludes 0, else even "
            "(`mean only` below 3 seeds)."
            if has_contrib
            else ""
        )
        + " Details per env below:",
        "",
        summary_table(found),
        "",
    ]
    for env in ordered(list(found), ENV_ORDER):
        sections.append(env_table(env, found[env], images=os.path.relpath(results, ROOT)))
        if plots:
            plot(env, found[env], os.path.join(results, f"{env}.png"))
    return "\n".join(sections).rstrip("\n")


def write_readme(text: str, readme: str = README, markers: str = "matrix") -> None:
    """Replace what is between the ``markers`` markers of ``readme``; exit with a message if they are missing."""
    replace_readme_section(text, markers, readme)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=RESULTS, help="result folder (default: benchmarks/results/matrix)")
    parser.add_argument("--envs", nargs="+", help="only these environments")
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNG curves")
    parser.add_argument("--readme", action="store_true", help="write the tables between the markers (docs/misc/results.md)")
    parser.add_argument("--markers", default="matrix", help="the section: between <!-- NAME:start/end -->")
    parser.add_argument("--readme-path", default=README, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    text = report(args.results, args.envs, plots=not args.no_plots)
    print(text)
    if args.readme:
        write_readme(text, args.readme_path, args.markers)
        print(f"\nwrote the tables between the {args.markers} markers", file=sys.stderr)


if __name__ == "__main__":
    main()
