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


def report(results: str, algos: Sequence[str], labels: Mapping[str, str]) -> str:
    """
    :param results: the folder of the cells' result files (and ``speed.json``)
    :param algos: the rows of each task, RecurrentTRPO's key (``trpo_lstm``) first
    :param labels: each key's name in the table
    :return: the markdown section: final return and AUC per task and algorithm, RecurrentTRPO's verdicts, the speed
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
        "made every 10% of the budget. IQM over seeds [95% bootstrap CI] (`benchmarks/intervals.py`); the verdict is "
        "RecurrentTRPO's against each other row, `ahead` / `behind` where the interval of the IQM difference excludes 0. "
        "Made by `python benchmarks/recurrent.py --algos trpo_lstm ppo_lstm trpo --envs CartPoleNoVel-v1 --seeds 0 1 2` "
        "then `python benchmarks/recurrent.py --readme` (one torch thread per run).",
        "",
        "| task | algorithm | seeds | final return | each seed | AUC | final: RecurrentTRPO vs this |",
        "|---|---|---|---|---|---|---|",
    ]
    for env_id in sorted({env for env, _ in found}):
        ours = [cell["final"] for cell in found.get((env_id, "trpo_lstm"), [])]
        for algo in algos:
            cells = sorted(found.get((env_id, algo), []), key=lambda cell: cell["seed"])
            if not cells:
                continue
            finals = [cell["final"] for cell in cells]
            aucs = [float(np.mean(cell["returns"])) for cell in cells if cell["returns"]]  # none in the first files
            compared = "-" if algo == "trpo_lstm" else verdict(difference_interval(ours, finals))
            budget = cells[0]["budget"]
            lines.append(
                f"| {env_id} ({budget // 1000}K) | {labels[algo]} | {len(cells)} | {iqm_interval(finals).text(fmt)} | "
                f"{', '.join(fmt(v) for v in finals)} | {iqm_interval(aucs).text(fmt)} | {compared} |"
            )
    if speed_file is not None:
        data = speed_file["data"]
        ours, ppo = max(data["rates"]["trpo_lstm"]), max(data["rates"]["ppo_lstm"])
        lines += [
            "",
            f"Speed, {data['env']}, {data['n_envs']} envs x n_steps {data['n_steps']} (equal rollouts, the same LSTM "
            f"network), {data['steps_per_round']:,} env steps per round after a one-update warm-up, best of "
            f"{len(data['rates']['trpo_lstm'])} alternating rounds, one torch thread, {speed_file.get('machine', '')}: "
            f"RecurrentTRPO {ours:,.0f} env-steps/s, RecurrentPPO ({data['ppo_epochs']} epochs, batch "
            f"{data['ppo_batch_size']}, rl-zoo3's ppo_lstm) {ppo:,.0f} env-steps/s: {ours / ppo:.2f}x "
            "(`python benchmarks/recurrent.py --speed`).",
        ]
    return "\n".join(lines) + "\n"
