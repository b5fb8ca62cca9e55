"""
The Atari tables and curves of the README and the docs' results page, from result files only.

    python -m reporting atari-report --snapshot /work/atari-runs   # runs still training: their games so far
    python -m reporting atari-report --readme                      # the tables and the figure, into README and docs

Sources:

- the matrix's Atari cells (``benchmarks/results/matrix/{algo}/{Game}NoFrameskip-v4/seed_{S}.json``, written by
  ``benchmarks/matrix.py --preset atari`` when a cell finishes): every full game the training envs played (the step
  at which it ended and its unclipped score, from the Monitor below AtariWrapper);
- the same, for cells still training: ``--snapshot LOGS`` reads the episode log of each run under the matrix's logs
  folder (its ``--logs``) and writes ``benchmarks/results/atari_progress/{algo}/{env}/seed_{S}.json`` with the steps
  reached so far; a finished cell's result replaces its snapshot;
- the GPU machine's curves (``benchmarks/results/atari_gpu/curve_*.json``, ``benchmarks/atari_gpu.py``): the YAML
  before and after the fast CPU path, at equal steps.

A game's score is the paper's: the mean of the last 100 full games, with a 95% bootstrap interval over those games
(``scipy.stats.bootstrap``). Human-normalized: ``(score - random) / (human - random)``. Reference scores (random,
human, the paper's Table 1, OpenAI baselines' ``trpo_mpi`` at 10M steps) are in :data:`REFERENCE`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

if not __package__:  # run as a file, python reporting/atari_report.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting.results_io import ROOT, read_result, write_result
from reporting.sections import replace_readme_section

MATRIX = os.path.join(ROOT, "benchmarks", "results", "matrix")
PROGRESS = os.path.join(ROOT, "benchmarks", "results", "atari_progress")
GPU = os.path.join(ROOT, "benchmarks", "results", "atari_gpu")
THROUGHPUT = os.path.join(ROOT, "benchmarks", "results", "speed_atari_before_after")
FIGURE = os.path.join("benchmarks", "results", "atari.png")
LAST_GAMES = 100

REFERENCE: dict[str, dict[str, float]] = {
    # random / human (Mnih et al. 2015), the paper's Table 1 (single path / vine), OpenAI baselines trpo_mpi at 10M
    "BeamRider": dict(random=363.9, human=16926.5, single_path=1425.2, vine=859.5, baselines=683.0),
    "Breakout": dict(random=1.7, human=30.5, single_path=10.8, vine=34.2, baselines=15.0),
    "Enduro": dict(random=0.0, human=860.5, single_path=534.6, vine=430.8, baselines=24.8),
    "Pong": dict(random=-20.7, human=14.6, single_path=20.9, vine=20.9, baselines=2.8),
    "Qbert": dict(random=163.9, human=13455.0, single_path=1973.5, vine=7732.5, baselines=2486.0),
    "Seaquest": dict(random=68.4, human=42054.7, single_path=1908.6, vine=788.4, baselines=710.0),
    "SpaceInvaders": dict(random=148.0, human=1668.7, single_path=568.4, vine=450.2, baselines=458.0),
}
"""Published scores per game (``REFERENCE.md``): random and human play, the paper (~50M steps), baselines (10M)."""

ALGOS = {
    "trpo_ext": "TRPO (ours)",
    "vine_trpo": "VineTRPO (ours)",
    "vine_trpo-atari-2m": "VineTRPO (ours, 13K-step iterations)",
    "sb3-contrib": "sb3-contrib TRPO",
}


def game_name(env_id: str) -> str:
    return env_id.split("NoFrameskip")[0]


def fmt(value: float) -> str:
    return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"


# ---------------------------------------------------------------------------------------------------------------------
# snapshots of runs in progress


def snapshot(logs: str) -> list[str]:
    """
    :param logs: the matrix's logs folder (``{algo}/{env}/seed_{S}/`` run folders)
    :return: the progress files written (one per Atari run with an episode log and no finished result)
    """
    from sb3_trpo_ext.zoo.resume import EPISODES_FILE, read_episodes

    written = []
    for cell in sorted(glob.glob(os.path.join(logs, "*", "*NoFrameskip-v4", "seed_*"))):
        algo, env, seed_dir = cell.split(os.sep)[-3:]
        if os.path.exists(os.path.join(MATRIX, algo, env, f"{seed_dir}.json")):
            continue
        logs_found = sorted(glob.glob(os.path.join(cell, "**", EPISODES_FILE), recursive=True), key=os.path.getmtime)
        live = [path for path in logs_found if "checkpoint_" not in path]
        if not live:
            continue
        games = read_episodes(live[-1])
        data = {
            "algo": algo,
            "env": env,
            "seed": int(seed_dir.split("_")[1]),
            "in_progress": True,
            "steps": int(games[-1].step) if games else 0,
            "episodes": {"steps": [int(g.step) for g in games], "scores": [round(float(g.r), 4) for g in games]},
        }
        path = os.path.join(PROGRESS, algo, env, f"{seed_dir}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_result(path, data)
        written.append(path)
    return written


# ---------------------------------------------------------------------------------------------------------------------
# the runs


def runs() -> list[dict[str, Any]]:
    """:return: every Atari run's games, a finished cell's result before a snapshot of the same cell"""
    found: dict[tuple[str, str, int], dict[str, Any]] = {}
    for root, finished in ((PROGRESS, False), (MATRIX, True)):
        for path in glob.glob(os.path.join(root, "*", "*NoFrameskip-v4", "seed_*.json")):
            result = read_result(path)
            data = result.get("data", result)
            episodes = data.get("episodes")
            if not episodes:
                continue
            algo, env, seed_file = path.split(os.sep)[-3:]
            seed = int(seed_file[len("seed_") : -len(".json")])
            steps = int(data.get("steps") or (episodes["steps"][-1] if episodes["steps"] else 0))
            if finished:
                steps = int(data.get("budget", steps))
            found[(algo, env, seed)] = dict(
                algo=algo, env=env, seed=seed, finished=finished, steps=steps,
                game_steps=np.asarray(episodes["steps"], dtype=float), scores=np.asarray(episodes["scores"], dtype=float),
            )  # fmt: skip
    return [found[key] for key in sorted(found)]


def score_interval(scores: np.ndarray) -> tuple[float, float, float]:
    """:return: the mean of the last 100 games and its 95% bootstrap interval"""
    last = scores[-LAST_GAMES:]
    if len(last) < 2 or np.all(last == last[0]):
        return float(np.mean(last)), float(np.mean(last)), float(np.mean(last))
    result = stats.bootstrap((last,), np.mean, confidence_level=0.95, n_resamples=2000, random_state=0)
    return float(np.mean(last)), float(result.confidence_interval.low), float(result.confidence_interval.high)


def score_at(run: dict[str, Any], steps: float) -> float | None:
    """:return: the mean of the last 100 games that ended by ``steps`` (None before the run got there)"""
    if run["steps"] < steps:
        return None
    scores = run["scores"][run["game_steps"] <= steps]
    return float(np.mean(scores[-LAST_GAMES:])) if len(scores) else None


# ---------------------------------------------------------------------------------------------------------------------
# tables


def games_table(all_runs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| game | algorithm | seed | env steps | score: last 100 games [95% CI] | vs random | human-normalized "
        "| paper single path / vine (~50M) | baselines trpo_mpi (10M) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in all_runs:
        game = game_name(run["env"])
        ref = REFERENCE[game]
        mean, low, high = score_interval(run["scores"])
        verdict = "above" if low > ref["random"] else ("below" if high < ref["random"] else "even")
        normalized = (mean - ref["random"]) / (ref["human"] - ref["random"])
        steps = f"{run['steps'] / 1e6:.2f}M" + ("" if run["finished"] else " (training)")
        lines.append(
            f"| {game} | {ALGOS.get(run['algo'], run['algo'])} | {run['seed']} | {steps} | "
            f"{fmt(mean)} [{fmt(low)}, {fmt(high)}] ({min(len(run['scores']), LAST_GAMES)} games) | {verdict} "
            f"({fmt(ref['random'])}) | {normalized:.3f} | {fmt(ref['single_path'])} / {fmt(ref['vine'])} | "
            f"{fmt(ref['baselines'])} |"
        )
    return lines


def gpu_curves() -> list[dict[str, Any]]:
    curves = []
    for path in sorted(glob.glob(os.path.join(GPU, "curve_*.json"))):
        with open(path) as f:
            curve = json.load(f)
        rows = np.asarray([(steps, score) for steps, _, score in curve["rows"]], dtype=float).reshape(-1, 2)
        curves.append(
            dict(algo="trpo_ext", env=curve["game"], seed=curve["seed"], config=curve["config"], finished=True,
                 steps=curve["num_timesteps"], game_steps=rows[:, 0], scores=rows[:, 1], device=curve["device"])
        )  # fmt: skip
    return curves


def before_after_table(all_runs: list[dict[str, Any]], at: Sequence[int] = (200_000, 300_000, 400_000)) -> list[str]:
    """The YAML before and after the fast CPU path on Breakout at equal env steps (GPU runs, and CPU runs of today's
    YAML where they got there)."""
    rows = [(f"before, {run['device']}", run) for run in gpu_curves() if run["config"] == "before"]
    rows += [(f"after, {run['device']}", run) for run in gpu_curves() if run["config"] == "yaml"]
    rows += [("after, cpu", run) for run in all_runs if run["algo"] == "trpo_ext" and game_name(run["env"]) == "Breakout"]
    lines = [
        "| Breakout, YAML | seed | " + " | ".join(f"last 100 games at {steps // 1000}K steps" for steps in at) + " |",
        "|---|---|" + "---|" * len(at),
    ]
    for label, run in rows:
        cells = [score_at(run, steps) for steps in at]
        lines.append(f"| {label} | {run['seed']} | " + " | ".join("-" if c is None else fmt(c) for c in cells) + " |")
    return lines


def throughput_table() -> list[str]:
    """The CPU throughput before and after the fast CPU path: the latest sitting under :data:`THROUGHPUT` (a dated
    folder of ``benchmarks/speed_atari.py`` rounds, the two codes alternating with nothing else running), the median
    of each code's rounds and the seconds per update of each part."""
    dated = sorted(d for d in glob.glob(os.path.join(THROUGHPUT, "*")) if os.path.isdir(d))
    if not dated:
        return []
    by_label: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(glob.glob(os.path.join(dated[-1], "*.json"))):
        result = read_result(path)
        by_label.setdefault(result["data"]["label"], []).append(result)
    labels = sorted(by_label, key=lambda label: not label.startswith("before"))
    rates = {label: [r["data"]["rows"][0]["steps_per_s"] for r in by_label[label]] for label in labels}
    baseline = float(np.median(rates[labels[0]]))
    first = by_label[labels[0]][0]
    lines = [
        f"Throughput on one core, Breakout, before and after the fast CPU path ({first['date'][:10]}, {first['machine']}, "
        f"the codes alternating, nothing else running; `{first['command'].split(' --label')[0]}` for before; "
        "pieces: the policy step's gradient and line search over pieces of 256 frames):",
        "",
        "| code | rounds: env-steps/s | median | vs before | rollout s | policy step s | critic fit s (per 4,096 steps) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        parts = [r["data"]["seconds_per_update"]["sb3-trpo-ext"] for r in by_label[label]]
        medians = [float(np.median([p[key] for p in parts])) for key in ("rollout", "policy_step", "critic")]
        median = float(np.median(rates[label]))
        lines.append(
            f"| {label} | {', '.join(f'{rate:.1f}' for rate in rates[label])} | {median:.1f} | "
            f"**{median / baseline:.2f}x** | " + " | ".join(f"{m:.1f}" for m in medians) + " |"
        )
    return lines


def figure(all_runs: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = sorted({game_name(run["env"]) for run in all_runs} | {"Breakout"})
    columns = min(4, len(games))
    rows = -(-len(games) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(max(6, 4 * columns), 3.5 * rows + 0.5), squeeze=False)
    for ax, game in zip(axes.flat, games, strict=False):
        for run in [r for r in all_runs if game_name(r["env"]) == game] + (gpu_curves() if game == "Breakout" else []):
            if len(run["scores"]) == 0:
                continue
            window = np.convolve(run["scores"], np.ones(LAST_GAMES), "valid") / LAST_GAMES
            x = run["game_steps"][LAST_GAMES - 1 :] if len(window) else run["game_steps"]
            y = window if len(window) else run["scores"]
            config = {"yaml": "after", "before": "before"}.get(run.get("config", ""), "")
            label = ALGOS.get(run["algo"], run["algo"]) + (f", YAML {config} ({run['device']})" if config else ", cpu")
            ax.plot(x / 1e6, y, label=f"{label}, seed {run['seed']}")
        ref = REFERENCE[game]
        ax.axhline(ref["random"], color="grey", linestyle=":", label="random")
        ax.set_title(game)
        ax.set_xlabel("env steps (M)")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(games) :]:
        ax.axis("off")
    fig.suptitle("Full-game score, mean of the last 100 games (Monitor, unclipped)")
    fig.tight_layout()
    fig.savefig(os.path.join(ROOT, FIGURE), dpi=80)
    plt.close(fig)


def report() -> str:
    all_runs = runs()
    if all_runs:
        figure(all_runs)
    lines = [
        "Our TRPO with the `atari` entry of `hyperparams/trpo_ext.yml` (`python benchmarks/matrix.py --preset atari "
        "--workers 2`, one torch thread per run, checkpointed and resumed across sessions), the score of the paper: "
        "the mean full-game score (Monitor below AtariWrapper, unclipped, all lives) of the last 100 games played by "
        "the training envs, 95% bootstrap interval over those games. Runs still training show the steps reached "
        "(`python benchmarks/atari_report.py --snapshot LOGS`). Generated by `python benchmarks/atari_report.py "
        "--readme`.",
        "",
        *(games_table(all_runs) if all_runs else ["No Atari run has reached its first checkpoint yet."]),
        "",
        "The fast CPU path (3 critic epochs instead of 5, the line search aimed at the trust region's boundary, "
        "bfloat16 rollouts, critic fit and Fisher products) against the YAML before it, at equal env steps on Breakout "
        "(`benchmarks/atari_gpu.py` on a GPU machine, one H200 with 16 cores, 8 SubprocVecEnv envs per run; and "
        "today's CPU runs):",
        "",
        *before_after_table(all_runs),
    ]
    throughput = throughput_table()
    if throughput:
        lines += ["", *throughput]
    if all_runs:
        lines += ["", f"![Atari learning curves]({FIGURE})"]
    return "\n".join(lines)


def summary() -> str:
    """:return: the README's short Atari section: each game's score so far against random play and the paper"""
    lines = [
        "Our TRPO on the paper's seven games with the `atari` YAML entry, on one CPU core per run (runs of 2M env steps, "
        "resumed across sessions). Score: the mean of the last 100 full games [95% bootstrap CI]; the before/after "
        "comparison of the fast CPU path and the curves are on the [results page](docs/misc/results.md).",
        "",
        "| game | env steps | ours | random | paper, single path (~50M) | human-normalized |",
        "|---|---|---|---|---|---|",
    ]
    for run in [r for r in runs() if r["algo"] == "trpo_ext"]:
        game, (mean, low, high) = game_name(run["env"]), score_interval(run["scores"])
        ref = REFERENCE[game]
        steps = f"{run['steps'] / 1e6:.2f}M" + ("" if run["finished"] else " (training)")
        normalized = (mean - ref["random"]) / (ref["human"] - ref["random"])
        lines.append(
            f"| {game} | {steps} | {fmt(mean)} [{fmt(low)}, {fmt(high)}] | {fmt(ref['random'])} | "
            f"{fmt(ref['single_path'])} | {normalized:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--snapshot", metavar="LOGS", help="write progress files for the Atari runs training in LOGS")
    parser.add_argument("--readme", action="store_true", help="write the section into the README and the docs")
    args = parser.parse_args(argv)
    if args.snapshot:
        for path in snapshot(args.snapshot):
            print(f"Wrote {os.path.relpath(path, ROOT)}")
    text = report()
    print(text)
    if args.readme:
        replace_readme_section(text, "atari")
        replace_readme_section(summary(), "atari-summary")
    return 0


if __name__ == "__main__":
    sys.exit(main())
