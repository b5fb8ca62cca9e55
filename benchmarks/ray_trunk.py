"""
RayVecEnv against SubprocVecEnv: Hopper-v5 TRPO with 16 envs, in one process run.

- End to end: env steps/s of ``model.learn`` (TRPO, same settings and seed) on a ``RayVecEnv`` of 2 actors x 8 envs
  and on a ``SubprocVecEnv`` of 16 processes; a warm-up rollout each, then ``--rounds`` rounds of ``--rollouts``
  rollouts, the two alternating so that machine noise hits both alike. The ratio is Ray's over Subproc's.
- The round trip of one ``RayVecEnv`` step: wall time of ``step_async`` + ``step_wait`` minus the envs' own stepping
  time measured inside the actors (the slower actor's, since they run in parallel), on random actions, and the bytes
  per step (pickled actions sent, pickled step results received; Ray's own framing not counted).

Ray runs only inside a private network namespace here (loopback only):

    unshare -n sh -c 'ip link set lo up; RAY_USAGE_STATS_ENABLED=0 .venv/bin/python benchmarks/ray_trunk.py'

Writes ``benchmarks/results/ray_trunk.json``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv, VecEnv

if not __package__:  # run as a file, python benchmarks/ray_trunk.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting.results_io import ROOT, command_line, write_result
from sb3_trpo_ext import TRPO

N_ENVS, ENVS_PER_ACTOR, ENV_ID = 16, 8, "Hopper-v5"


def check_namespace(script: str) -> None:
    """
    :param script: the tool's file, for the message (``benchmarks/ray_trunk.py``)
    :raises SystemExit: outside a loopback-only network namespace (Ray must not bind an outside interface)
    """
    interfaces = [name for _, name in socket.if_nameindex()]
    if interfaces != ["lo"] or os.environ.get("RAY_USAGE_STATS_ENABLED") != "0":
        raise SystemExit(
            f"{os.path.basename(script)} starts Ray, which must run here only in a private network namespace with "
            f"RAY_USAGE_STATS_ENABLED=0 (interfaces now: {', '.join(interfaces)}). Run it as: unshare -n sh -c "
            f"'ip link set lo up; RAY_USAGE_STATS_ENABLED=0 .venv/bin/python {script}'"
        )


def namespace_command() -> str:
    """:return: this process's command as run in its network namespace (the command a result records)"""
    return f"unshare -n sh -c 'ip link set lo up; RAY_USAGE_STATS_ENABLED=0 .venv/bin/{command_line()}'"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-steps", type=int, default=128, help="TRPO's n_steps (per env): 16 x 128 = 2048 a rollout")
    parser.add_argument("--rollouts", type=int, default=3, help="rollouts per timed learn()")
    parser.add_argument("--rounds", type=int, default=3, help="timed learn() calls per VecEnv, alternating")
    parser.add_argument("--profile-steps", type=int, default=300, help="random-action steps of the round-trip profile")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "ray_trunk.json"))
    return parser.parse_args(argv)


def build_envs() -> dict[str, VecEnv]:
    """:return: the two VecEnvs of 16 Hopper-v5 envs, both seeded 0 and Monitor-wrapped as ``make_vec_env`` does"""
    from sb3_trpo_ext.distributed import RayVecEnv

    return {
        "ray": RayVecEnv(ENV_ID, n_envs=N_ENVS, envs_per_actor=ENVS_PER_ACTOR, seed=0),
        "subproc": make_vec_env(ENV_ID, n_envs=N_ENVS, seed=0, vec_env_cls=SubprocVecEnv),
    }


def time_learning(models: dict[str, TRPO], n_steps: int, rollouts: int, rounds: int) -> dict[str, list[float]]:
    """:return: env steps/s of each timed ``learn`` per model (after one warm-up rollout each)"""
    for model in models.values():
        model.learn(n_steps * N_ENVS)
    rates: dict[str, list[float]] = {name: [] for name in models}
    total = rollouts * n_steps * N_ENVS
    for round_index in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.learn(total, reset_num_timesteps=False)
            rates[name].append(total / (time.perf_counter() - start))
            print(f"round {round_index}: {name:8s} {rates[name][-1]:8.0f} env steps/s", flush=True)
    return rates


def profile_ray_steps(env: Any, n_steps: int) -> dict[str, float]:
    """
    :param env: the RayVecEnv
    :param n_steps: random-action steps (the bytes are counted on a fifth of them, pickling costs time)
    :return: per vectorised step: the round trip, the slower actor's env time, the overhead, the bytes
    """
    rng = np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high
    env.reset()
    env.timing.update(steps=0, round_trip_s=0.0, env_s=0.0, bytes_sent=0, bytes_received=0)
    for _ in range(n_steps):
        env.step(rng.uniform(low, high, size=(N_ENVS, *env.action_space.shape)).astype(np.float32))
    timing = dict(env.timing)
    env.measure_bytes = True
    env.timing.update(steps=0, bytes_sent=0, bytes_received=0)
    for _ in range(max(1, n_steps // 5)):
        env.step(rng.uniform(low, high, size=(N_ENVS, *env.action_space.shape)).astype(np.float32))
    env.measure_bytes = False
    steps = env.timing["steps"]
    return {
        "round_trip_ms": 1e3 * timing["round_trip_s"] / timing["steps"],
        "actor_env_ms": 1e3 * timing["env_s"] / timing["steps"],
        "overhead_ms": 1e3 * (timing["round_trip_s"] - timing["env_s"]) / timing["steps"],
        "bytes_sent_per_step": env.timing["bytes_sent"] / steps,
        "bytes_received_per_step": env.timing["bytes_received"] / steps,
    }


def profile_subproc_steps(env: VecEnv, n_steps: int) -> float:
    """:return: the mean wall time of one SubprocVecEnv step on random actions, in ms"""
    rng = np.random.default_rng(0)
    low, high = env.action_space.low, env.action_space.high  # type: ignore[attr-defined]
    env.reset()
    start = time.perf_counter()
    for _ in range(n_steps):
        env.step(rng.uniform(low, high, size=(N_ENVS, *env.action_space.shape)).astype(np.float32))  # type: ignore[misc]
    return 1e3 * (time.perf_counter() - start) / n_steps


def main(argv: Sequence[str] | None = None) -> None:
    check_namespace("benchmarks/ray_trunk.py")
    args = parse_args(argv)
    th.set_num_threads(1)
    load_before = os.getloadavg()
    envs = build_envs()
    try:
        settings = dict(n_steps=args.n_steps, batch_size=128, n_critic_updates=10, seed=0)
        models = {name: TRPO("MlpPolicy", env, **settings) for name, env in envs.items()}
        rates = time_learning(models, args.n_steps, args.rollouts, args.rounds)
        in_learn = dict(envs["ray"].timing)  # type: ignore[attr-defined]
        ray_steps = profile_ray_steps(envs["ray"], args.profile_steps)
        subproc_ms = profile_subproc_steps(envs["subproc"], args.profile_steps)
    finally:
        for env in envs.values():
            env.close()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    data = {
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "setup": {
            "env": ENV_ID,
            "n_envs": N_ENVS,
            "ray_actors": N_ENVS // ENVS_PER_ACTOR,
            "envs_per_actor": ENVS_PER_ACTOR,
            "subproc_processes": N_ENVS,
            "torch_threads": 1,
            "rollouts": args.rollouts,
            "rounds": args.rounds,
            "trpo": settings,
        },
        "learn_env_steps_per_s": {name: dict(median=medians[name], rounds=rates[name]) for name in rates},
        "ratio_ray_over_subproc": medians["ray"] / medians["subproc"],
        "ray_step_during_learn_ms": {
            "round_trip": 1e3 * in_learn["round_trip_s"] / in_learn["steps"],
            "actor_env": 1e3 * in_learn["env_s"] / in_learn["steps"],
            "overhead": 1e3 * (in_learn["round_trip_s"] - in_learn["env_s"]) / in_learn["steps"],
        },
        "ray_step_random_actions": ray_steps,
        "subproc_step_random_actions_ms": subproc_ms,
    }
    write_result(args.output, data, command=namespace_command(), git_paths=["sb3_trpo_ext", "benchmarks/ray_trunk.py"])
    print(f"ratio Ray / Subproc (median env steps/s of learn): {data['ratio_ray_over_subproc']:.3f}")
    print(f"Ray step: {ray_steps}; Subproc step: {subproc_ms:.2f} ms; wrote {args.output}")


if __name__ == "__main__":
    main()
