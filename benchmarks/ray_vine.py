"""
The vine's branches on a 2-actor RayBranchPool against the 2 workers of a SubprocVecEnv: VineTRPO on Hopper-v5
(N 64, K 4, m 20, 32 clones per worker: 4 waves of 64 branches per iteration), in one process run.

- Both models train on a SubprocVecEnv of 2 envs (same seed, same trunks); one runs its branches on the trunk's
  workers, the other on the Ray pool. The branch phase (the branch runner's ``run``, seen through a timing view of the
  runner that a VineTRPO subclass hands its rollouts: :class:`TimedVineTRPO`) is timed: simulator steps/s of the
  branches.
  A warm-up iteration each, then ``--rounds`` rounds of ``--iterations`` iterations, alternating.
- The Q-values of every iteration are compared bit for bit (same worker split, so the same bits).
- The pool's per-wave costs: wall time, the slowest actor's compute time, the overhead (their difference: object
  store, scheduling, transfer), and the message sizes of a wave (the shared object, the per-actor parts, the replies;
  pickled, Ray's framing not counted), and the driver's time per wave outside the pool (building the waves: noise,
  first actions, weights). The updates' cost per sample (critic fit, policy step) for the projection of
  ``reporting/ray_report.py``.

Ray runs only inside a private network namespace here (loopback only):

    unshare -n sh -c 'ip link set lo up; RAY_USAGE_STATS_ENABLED=0 .venv/bin/python benchmarks/ray_vine.py'

Writes ``benchmarks/results/ray_vine.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv

if not __package__:  # run as a file, python benchmarks/ray_vine.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks.ray_trunk import check_namespace, namespace_command
from reporting.results_io import ROOT, write_result
from sb3_trpo_ext import VineTRPO

ENV_ID, N_ENVS, N_ACTORS = "Hopper-v5", 2, 2
VINE = dict(n_rollout_states=64, n_actions_per_state=4, rollout_length=20, branch_envs_per_worker=32)
SETTINGS = dict(n_steps=512, batch_size=128, n_critic_updates=10, seed=0, **VINE)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=2, help="iterations per timed learn()")
    parser.add_argument("--rounds", type=int, default=3, help="timed learn() calls per model, alternating")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "ray_vine.json"))
    return parser.parse_args(argv)


class TimedBranchRunner:
    """
    A view of a branch runner: its ``run`` timed, its seconds, steps and Q-values handed to ``record``; everything
    else is the runner's.

    :param runner: the model's branch runner
    :param record: called with the seconds, the simulator steps and the Q-values of each branch phase
    """

    def __init__(self, runner: Any, record: Any) -> None:
        self.runner = runner
        self.record = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self.runner, name)

    def run(self, *args: Any) -> tuple[np.ndarray, int]:
        start = time.perf_counter()
        q_values, steps = self.runner.run(*args)
        self.record(time.perf_counter() - start, steps, q_values.copy())
        return q_values, steps


class TimedVineTRPO(VineTRPO):
    """
    VineTRPO that records the seconds, steps and Q-values of each branch phase (its rollouts see the runner through a
    :class:`TimedBranchRunner`) and each update's logged times. Each model keeps its own global random states (the
    trunk's policy noise comes from torch's global generator), so that two models learning in turn
    (:meth:`learn_iterations`) draw what each would draw alone.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.branch: list[tuple[float, int]] = []
        self.q_values: list[np.ndarray] = []
        self.updates: list[dict[str, float]] = []
        super().__init__(*args, **kwargs)
        set_random_seed(self.seed)
        self.random_states = (th.get_rng_state(), np.random.get_state(), random.getstate())

    def _branch_runner(self, env: VecEnv) -> Any:
        return TimedBranchRunner(super()._branch_runner(env), self.record_branches)

    def record_branches(self, seconds: float, steps: int, q_values: np.ndarray) -> None:
        self.branch.append((seconds, steps))
        self.q_values.append(q_values)

    def train(self) -> None:
        super().train()
        values = self.logger.name_to_value
        self.updates.append({key: float(values[f"time/{key}"]) for key in ("critic_fit_s", "policy_step_s")})

    def learn_iterations(self, iterations: int) -> float:
        """:return: branch simulator steps/s over ``iterations`` iterations"""
        done = len(self.branch)
        torch_state, numpy_state, python_state = self.random_states
        th.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        for _ in range(iterations):
            self.learn(1, reset_num_timesteps=False)
        self.random_states = (th.get_rng_state(), np.random.get_state(), random.getstate())
        seconds, steps = map(sum, zip(*self.branch[done:], strict=True))
        return steps / seconds


def build_models() -> tuple[dict[str, TimedVineTRPO], Any]:
    """Both trunks first (forked before Ray starts), then Ray and the pool; :return: the models and the pool"""
    envs = {name: make_vec_env(ENV_ID, n_envs=N_ENVS, seed=0, vec_env_cls=SubprocVecEnv) for name in ("subproc", "ray")}
    from sb3_trpo_ext.distributed import RayBranchPool

    pool = RayBranchPool(ENV_ID, n_actors=N_ACTORS, num_cpus_per_actor=1.0)
    models = {
        "subproc": TimedVineTRPO("MlpPolicy", envs["subproc"], **SETTINGS),
        "ray": TimedVineTRPO("MlpPolicy", envs["ray"], branch_pool=pool, **SETTINGS),
    }
    return models, pool


def wave_costs(pool: Any, model: TimedVineTRPO) -> dict[str, float]:
    """One more iteration with the message sizes measured; :return: the pool's per-wave costs over every wave"""
    timing = dict(pool.timing)
    pool.measure_bytes = True
    pool.timing.update(waves=0, bytes_shared=0, bytes_policy=0, bytes_parts=0, bytes_replies=0)
    model.learn_iterations(1)
    sizes = dict(pool.timing)
    timed = model.branch[1:-1]  # after the warm-up, before this iteration
    waves, steps, phase_s = timing["waves"], sum(steps for _, steps in timed), sum(seconds for seconds, _ in timed)
    states_per_wave = N_ACTORS * VINE["branch_envs_per_worker"] / VINE["n_actions_per_state"]
    return {
        "waves": waves,
        "branches_per_wave": N_ACTORS * VINE["branch_envs_per_worker"],
        "wave_ms": 1e3 * timing["wave_s"] / waves,
        "slowest_actor_ms": 1e3 * timing["actor_s"] / waves,
        "overhead_ms": 1e3 * (timing["wave_s"] - timing["actor_s"]) / waves,
        "actor_ms_per_branch_step": 1e3 * timing["actor_s"] / (steps / N_ACTORS),
        "driver_ms_per_wave": 1e3 * (phase_s - timing["wave_s"]) / waves,
        "bytes_shared_per_wave": sizes["bytes_shared"] / sizes["waves"],
        "bytes_policy_per_wave": sizes["bytes_policy"] / sizes["waves"],
        "bytes_per_snapshot": (sizes["bytes_shared"] - sizes["bytes_policy"]) / sizes["waves"] / states_per_wave,
        "bytes_parts_per_wave": sizes["bytes_parts"] / sizes["waves"],
        "bytes_replies_per_wave": sizes["bytes_replies"] / sizes["waves"],
    }


def update_costs(timed: TimedVineTRPO) -> dict[str, float]:
    """:return: the update's seconds per sample: the critic fit per trunk sample, the policy step per branch"""
    trunk = SETTINGS["n_steps"] * N_ENVS
    branches = VINE["n_rollout_states"] * VINE["n_actions_per_state"]
    critic = statistics.median(update["critic_fit_s"] for update in timed.updates)
    policy = statistics.median(update["policy_step_s"] for update in timed.updates)
    return {"critic_fit_s_per_trunk_sample": critic / trunk, "policy_step_s_per_branch": policy / branches}


def main(argv: Sequence[str] | None = None) -> None:
    check_namespace("benchmarks/ray_vine.py")
    args = parse_args(argv)
    th.set_num_threads(1)
    load_before = os.getloadavg()
    models, pool = build_models()
    try:
        for model in models.values():
            model.learn_iterations(1)  # warm-up: the workers build their clones and policies
        pool.timing.update(waves=0, wave_s=0.0, actor_s=0.0)
        rates: dict[str, list[float]] = {name: [] for name in models}
        for round_index in range(args.rounds):
            for name, model in models.items():
                rates[name].append(model.learn_iterations(args.iterations))
                print(f"round {round_index}: {name:8s} {rates[name][-1]:8.0f} branch steps/s", flush=True)
        costs = wave_costs(pool, models["ray"])
        models["subproc"].learn_iterations(1)  # the same number of iterations for the Q-value comparison
        pairs = list(zip(models["ray"].q_values, models["subproc"].q_values, strict=True))
        identical = all(np.array_equal(ours, theirs) for ours, theirs in pairs)
        updates = update_costs(models["subproc"])
    finally:
        pool.close()
        for model in models.values():
            model.env.close()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    data = {
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "setup": {
            "env": ENV_ID,
            "trunk": f"SubprocVecEnv of {N_ENVS}",
            "ray_actors": N_ACTORS,
            "subproc_workers": N_ENVS,
            "torch_threads": 1,
            "iterations": args.iterations,
            "rounds": args.rounds,
            "vine": SETTINGS,
        },  # fmt: skip
        "branch_steps_per_s": {name: dict(median=medians[name], rounds=rates[name]) for name in rates},
        "ratio_ray_over_subproc": medians["ray"] / medians["subproc"],
        "q_values_bit_identical": identical,
        "q_value_iterations_compared": len(pairs),
        "ray_wave": costs,
        "update": updates,
    }
    write_result(args.output, data, command=namespace_command(), git_paths=["sb3_trpo_ext", "benchmarks/ray_vine.py"])
    print(f"ratio Ray / Subproc (median branch steps/s): {data['ratio_ray_over_subproc']:.3f}; identical: {identical}")
    print(f"Ray wave: {costs}; wrote {args.output}")


if __name__ == "__main__":
    main()
