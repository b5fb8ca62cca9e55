"""
The recurrent page's tables (``python benchmarks/recurrent.py --readme``, between the ``recurrent`` markers of
``docs/modules/recurrent_trpo.md``): RecurrentTRPO against RecurrentPPO and feed-forward TRPO, the IQM over seeds with
bootstrap intervals and verdicts (:mod:`reporting.intervals`), and the speed run, from the result files that
``benchmarks/recurrent.py`` writes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from reporting import results_io
from reporting.intervals import difference_interval, iqm_interval, verdict


def fmt(value: float) -> str:
    """:return: ``value`` with thousands separators from 100 on, else 3 significant digits"""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def report(results: str, algos: Sequence[str], labels: Mapping[str, str], defaults_suffix: str = "-defaults") -> str:
    """
    :param results: the folder of the cells' result files (and ``speed.json``)
    :param algos: the rows of each task, RecurrentTRPO's key (``trpo_lstm``) first
    :param labels: each key's name in the table
    :param defaults_suffix: what ends the keys of the class-defaults cells (a second table)
    :return: the markdown section: final return and AUC per task and algorithm with RecurrentTRPO's verdicts, for the
        YAML settings and for the class defaults, then the speed
    """
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    speed_file = None
    for name in sorted(os.listdir(results)) if os.path.isdir(results) else []:
        if not name.endswith(".json"):
            continue
        content = results_io.read_result(os.path.join(results, name))
        if name == "speed.json":
            speed_file = content
            continue
        data = content["data"]
        found.setdefault((data["env"], data["algo"]), []).append(data)
    lines = [
        "Final return: 20 deterministic episodes after training; AUC: the mean of the 10 evaluations (10 episodes each) "
        "made every 10% of the budget. IQM over seeds [95% bootstrap CI] (`reporting/intervals.py`); the verdicts are "
        "RecurrentTRPO's against each other row, `ahead` / `behind` where the interval of the IQM difference excludes 0 "
        "(the difference in parentheses). One torch thread per run.",
        "",
        "Each library's YAML (ours: `hyperparams/trpo_lstm.yml`; RecurrentPPO: rl-zoo3's `ppo_lstm.yml`; feed-forward "
        "TRPO: our entry without the LSTM). Made by `python benchmarks/recurrent.py --algos trpo_lstm ppo_lstm trpo "
        "--envs CartPoleNoVel-v1 PendulumNoVel-v1 --seeds 0 1 2` then `python benchmarks/recurrent.py --readme`.",
        "",
        *table(found, list(algos), labels),
    ]
    defaults = [f"{algo}{defaults_suffix}" for algo in algos]
    if any(algo in defaults for _, algo in found):
        lines += [
            "",
            'Class defaults (no YAML: `RecurrentTRPO("MlpLstmPolicy", env)`, `RecurrentPPO("MlpLstmPolicy", env)`, '
            '`TRPO("MlpPolicy", env)`; one env, no normalization). Made by `python benchmarks/recurrent.py '
            "--defaults --algos trpo_lstm ppo_lstm trpo --envs CartPoleNoVel-v1 PendulumNoVel-v1 --seeds 0 1 2`.",
            "",
            *table(found, defaults, {key: labels[key.removesuffix(defaults_suffix)] for key in defaults}),
        ]
    if speed_file is not None:
        lines += ["", speed_line(speed_file)]
    return "\n".join(lines) + "\n"


def table(found: Mapping[tuple[str, str], list[dict[str, Any]]], algos: list[str], labels: Mapping[str, str]) -> list[str]:
    """
    :param found: the cells' data by (task, key)
    :param algos: the rows of each task, RecurrentTRPO's first (the one the verdicts are about)
    :param labels: each key's name
    :return: the table's lines
    """
    lines = [
        "| task | algorithm | seeds | final return | each seed | AUC | final: RecurrentTRPO vs this "
        "| AUC: RecurrentTRPO vs this |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ours = algos[0]
    for env_id in sorted({env for env, algo in found if algo in algos}):
        our_cells = found.get((env_id, ours), [])
        our_finals = [cell["final"] for cell in our_cells]
        our_aucs = [float(np.mean(cell["returns"])) for cell in our_cells if cell["returns"]]
        for algo in algos:
            cells = sorted(found.get((env_id, algo), []), key=lambda cell: cell["seed"])
            if not cells:
                continue
            finals = [cell["final"] for cell in cells]
            aucs = [float(np.mean(cell["returns"])) for cell in cells if cell["returns"]]  # none in the first files
            final_verdict = auc_verdict = "-"
            if algo != ours:
                final_verdict = compared(our_finals, finals)
                auc_verdict = compared(our_aucs, aucs) if our_aucs and aucs else "-"
            lines.append(
                f"| {env_id} ({cells[0]['budget'] // 1000}K) | {labels[algo]} | {len(cells)} | "
                f"{iqm_interval(finals).text(fmt)} | {', '.join(fmt(v) for v in finals)} | "
                f"{iqm_interval(aucs).text(fmt) if aucs else '-'} | {final_verdict} | {auc_verdict} |"
            )
    return lines


def compared(ours: Sequence[float], theirs: Sequence[float]) -> str:
    """:return: the verdict of ``ours`` against ``theirs`` with the interval of the IQM difference"""
    difference = difference_interval(ours, theirs)
    return f"{verdict(difference)} ({difference.text(lambda value: f'{value:+.3g}')})"


def speed_line(speed_file: Mapping[str, Any]) -> str:
    """:return: the speed run's sentence"""
    data = speed_file["data"]
    ours, ppo = max(data["rates"]["trpo_lstm"]), max(data["rates"]["ppo_lstm"])
    return (
        f"Speed, {data['env']}, {data['n_envs']} envs x n_steps {data['n_steps']} (equal rollouts, the same LSTM "
        f"network), {data['steps_per_round']:,} env steps per round after a one-update warm-up, best of "
        f"{len(data['rates']['trpo_lstm'])} alternating rounds, one torch thread, {speed_file.get('machine', '')}: "
        f"RecurrentTRPO {ours:,.0f} env-steps/s, RecurrentPPO ({data['ppo_epochs']} epochs, batch "
        f"{data['ppo_batch_size']}, rl-zoo3's ppo_lstm) {ppo:,.0f} env-steps/s: {ours / ppo:.2f}x "
        "(`python benchmarks/recurrent.py --speed`)."
    )
