"""
Action masking: MaskableTRPO against sb3-contrib's MaskablePPO and against our unmasked TRPO, on sb3-contrib's
masked-action test envs and on a scheduling task where most actions are invalid in most states.

Each (task, algorithm, seed) run trains one model in this process (one torch thread), evaluates it deterministically
every fifth of the budget (masked algorithms with the env's masks, the unmasked TRPO without) and keeps the result in
``benchmarks/results/maskable/TASK__ALGO__seedS.json`` (a result file of ``benchmarks/results_io.py``); runs whose file
exists are skipped, so an interrupted run resumes. ``--readme`` writes the table (IQM over seeds, 95% bootstrap
intervals, verdicts from ``benchmarks/intervals.py``) into the docs between the ``maskable`` markers.

    python benchmarks/maskable.py --seeds 0 1 2                 # every task and algorithm
    python benchmarks/maskable.py --tasks SlotScheduling --algos MaskableTRPO TRPO --seeds 0
    python benchmarks/maskable.py --readme                      # the table, into docs/misc/results.md and the page

:class:`SlotSchedulingEnv` is the task where masking changes the outcome: 8 jobs arrive one by one, each may go into
one of the 3 slots of its window (of 24) that is still free, or be skipped; the earlier slot of its window pays more
(1, 0.6, 0.3). Placing a job in a slot that is taken or outside its window makes the schedule infeasible: reward -1
and the episode ends. With masks only the feasible slots (and skip) can be chosen, about 3 of 25 actions.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

if not __package__:  # run as a file, python benchmarks/maskable.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks.intervals import difference_interval, iqm_interval, verdict
from benchmarks.results_io import read_result, replace_docs_section, replace_readme_section, write_result

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "maskable")
DOCS_PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "modules", "maskable.md")
N_EVALUATIONS = 5


class SlotSchedulingEnv(gym.Env):
    """
    Jobs into time slots (see the module's docstring). Observation: which slots are taken, the current job's window
    (one-hot over the slots) and the share of jobs left; action: a slot, or the last action, skip the job.

    :param n_slots: the number of slots
    :param n_jobs: the jobs of an episode
    :param window: the slots a job may take, from its (random) earliest one
    """

    VALUES = (1.0, 0.6, 0.3)

    def __init__(self, n_slots: int = 24, n_jobs: int = 8, window: int = 3) -> None:
        self.n_slots, self.n_jobs, self.window = n_slots, n_jobs, window
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2 * n_slots + 1,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(n_slots + 1)
        self.taken = np.zeros(n_slots, dtype=bool)
        self.starts = np.zeros(n_jobs, dtype=int)
        self.job = 0

    def _observation(self) -> np.ndarray:
        in_window = np.zeros(self.n_slots, dtype=np.float32)
        if self.job < self.n_jobs:
            in_window[self.starts[self.job] : self.starts[self.job] + self.window] = 1.0
        left = np.float32((self.n_jobs - self.job) / self.n_jobs)
        return np.concatenate([self.taken.astype(np.float32), in_window, [left]]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.taken[:] = False
        self.starts = self.np_random.integers(0, self.n_slots - self.window + 1, self.n_jobs)
        self.job = 0
        return self._observation(), {}

    def action_masks(self) -> np.ndarray:
        """:return: True for the free slots of the current job's window, and for skip"""
        valid = np.zeros(self.n_slots + 1, dtype=bool)
        start = self.starts[self.job]
        valid[start : start + self.window] = ~self.taken[start : start + self.window]
        valid[-1] = True
        return valid

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = int(action)
        if not self.action_masks()[action]:
            return self._observation(), -1.0, True, False, {"infeasible": True}
        reward = 0.0
        if action < self.n_slots:
            self.taken[action] = True
            reward = self.VALUES[action - self.starts[self.job]]
        self.job += 1
        done = self.job == self.n_jobs
        if done:
            self.job -= 1  # the observation after the last job keeps its shape
        observation = self._observation()
        self.job += int(done)
        return observation, reward, done, False, {}


if "SlotScheduling-v0" not in gym.registry:  # for the zoo: --gym-packages benchmarks.maskable
    gym.register("SlotScheduling-v0", entry_point=SlotSchedulingEnv)


def _invalid_action_env(kind: str) -> Callable[[], gym.Env]:
    from sb3_contrib.common.envs import InvalidActionEnvDiscrete, InvalidActionEnvMultiBinary, InvalidActionEnvMultiDiscrete

    makers: dict[str, Callable[[], gym.Env]] = {
        "Discrete": lambda: InvalidActionEnvDiscrete(dim=70, n_invalid_actions=55),
        "MultiDiscrete": lambda: InvalidActionEnvMultiDiscrete(dims=[10, 10], n_invalid_actions=14),
        "MultiBinary": lambda: InvalidActionEnvMultiBinary(dims=8, n_invalid_actions=6),
    }
    return makers[kind]


TASKS: dict[str, dict[str, Any]] = {
    "SlotScheduling": dict(make=SlotSchedulingEnv, budget=50_000, gamma=0.99, episodes=20,
                           shape="Discrete(25), ~22 masked"),
    "InvalidActionEnvDiscrete": dict(make=_invalid_action_env("Discrete"), budget=10_000, gamma=0.1, episodes=5,
                                     shape="Discrete(70), 55 masked per state"),
    "InvalidActionEnvMultiDiscrete": dict(make=_invalid_action_env("MultiDiscrete"), budget=10_000, gamma=0.1,
                                          episodes=5, shape="MultiDiscrete([10, 10]), 14 of 20 masked"),
    "InvalidActionEnvMultiBinary": dict(make=_invalid_action_env("MultiBinary"), budget=10_000, gamma=0.1, episodes=5,
                                        shape="MultiBinary(8), 6 of 16 masked"),
}  # fmt: skip
"""Task -> how to make its env, the budget, gamma (the identity envs: 0.1, as sb3-contrib's test), the evaluation
episodes (the identity envs' are 100 steps long, the scheduling task's 8) and its action space."""

ALGOS = ("MaskableTRPO", "MaskablePPO", "TRPO", "MaskableNaturalPG")
"""The table's columns; a run without ``--algos`` trains the first three (MaskableNaturalPG on request)."""
MASKED = {"MaskableTRPO", "MaskablePPO", "MaskableNaturalPG"}
N_STEPS = 512
"""Every algorithm collects 512 steps per update (its class defaults otherwise)."""


def algorithm_class(name: str) -> type:
    if name == "MaskablePPO":
        from sb3_contrib import MaskablePPO

        return MaskablePPO
    import sb3_trpo_ext

    return getattr(sb3_trpo_ext, name)


def evaluate(model: Any, env: gym.Env, masked: bool, episodes: int) -> float:
    """The mean return of ``episodes`` deterministic episodes (with the env's masks for a masked model)."""
    if masked:
        from sb3_contrib.common.maskable.evaluation import evaluate_policy as masked_evaluate

        mean, _ = masked_evaluate(model, env, n_eval_episodes=episodes, warn=False)
    else:
        from stable_baselines3.common.evaluation import evaluate_policy

        mean, _ = evaluate_policy(model, env, n_eval_episodes=episodes, warn=False)
    return float(mean)


def run(task: str, algo: str, seed: int) -> dict[str, Any]:
    """Train one model, evaluated every fifth of the budget; :return: the result's data."""
    import torch as th

    th.set_num_threads(1)
    spec = TASKS[task]
    env, eval_env = spec["make"](), spec["make"]()
    eval_env.reset(seed=10_000 + seed)
    kwargs: dict[str, Any] = dict(n_steps=N_STEPS, gamma=spec["gamma"], seed=seed)
    if algo != "MaskablePPO":
        kwargs["batch_size"] = 128
    model = algorithm_class(algo)("MlpPolicy", env, **kwargs)
    step = spec["budget"] // N_EVALUATIONS
    evaluations = [[0, evaluate(model, eval_env, algo in MASKED, spec["episodes"])]]
    for k in range(1, N_EVALUATIONS + 1):
        model.learn(step, reset_num_timesteps=False)
        evaluations.append([k * step, evaluate(model, eval_env, algo in MASKED, spec["episodes"])])
    returns = [value for _, value in evaluations[1:]]
    return dict(task=task, algo=algo, seed=seed, budget=spec["budget"], settings={k: v for k, v in kwargs.items()},
                evaluations=evaluations, final=returns[-1], auc=float(np.mean(returns)))  # fmt: skip


def result_path(task: str, algo: str, seed: int) -> str:
    return os.path.join(RESULTS, f"{task}__{algo}__seed{seed}.json")


def load(results: str = RESULTS) -> dict[tuple[str, str], list[dict[str, Any]]]:
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


def table(found: dict[tuple[str, str], list[dict[str, Any]]]) -> str:
    """The markdown section: final return per task and algorithm, and MaskableTRPO's verdicts."""
    lines = [
        "Final return (deterministic episodes after the budget: 20 of SlotScheduling, 5 of the 100-step identity envs; "
        "masked algorithms evaluated with the env's masks, "
        "the unmasked TRPO without) as the IQM over seeds [95% bootstrap CI]; verdict of MaskableTRPO against each "
        "other algorithm from the interval of the IQM difference (ahead / behind where it excludes 0, else even), "
        "the difference in parentheses; AUC: the same verdicts on a run's mean evaluation return over its 5 evaluations "
        f"(how fast it learns). Every algorithm at its class defaults with n_steps={N_STEPS} (and gamma 0.1 "
        "on the identity envs, as sb3-contrib's test); one torch thread. Made by `python benchmarks/maskable.py "
        "--seeds 0 1 2` then `python benchmarks/maskable.py --readme`; result files in "
        "[`benchmarks/results/maskable/`](benchmarks/results/maskable/).",
        "",
        "| task | action space | budget | seeds | MaskableTRPO | MaskablePPO | TRPO (unmasked) | MaskableNaturalPG "
        "| MaskableTRPO vs MaskablePPO | MaskableTRPO vs TRPO | AUC: vs MaskablePPO | AUC: vs TRPO |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, spec in TASKS.items():
        runs = {algo: found.get((task, algo), []) for algo in ALGOS}
        if not any(runs.values()):
            continue
        seeds = min(len(r) for r in runs.values() if r)
        cells = [_cell(runs[algo], "final") for algo in ALGOS]
        pairs = [(key, other) for key in ("final", "auc") for other in ("MaskablePPO", "TRPO")]
        versus = [_versus(runs["MaskableTRPO"], runs[other], key) for key, other in pairs]
        row = [task, spec["shape"], f"{spec['budget'] // 1000}K", str(seeds), *cells, *versus]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--algos", nargs="+", default=list(ALGOS[:3]), choices=list(ALGOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--readme", action="store_true", help="write the table into the docs (no training)")
    args = parser.parse_args(argv)
    if args.readme:
        text = table(load())
        replace_readme_section(text, "maskable")
        if not replace_docs_section(text.strip("\n"), "maskable", DOCS_PAGE):
            print(f"note: {DOCS_PAGE} has no maskable markers", file=sys.stderr)
        return 0
    for task in args.tasks:
        for seed in args.seeds:
            for algo in args.algos:
                path = result_path(task, algo, seed)
                if os.path.exists(path):
                    continue
                data = run(task, algo, seed)
                write_result(path, data)
                print(f"{task} {algo} seed {seed}: final {data['final']:.2f}, AUC {data['auc']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
