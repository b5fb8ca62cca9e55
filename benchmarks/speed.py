"""
Speed: our TRPO vs sb3-contrib's TRPO, side by side in one process run.

Hopper-v5 with rl-zoo3's MuJoCo TRPO settings (n_steps 1024, batch 128, 20 critic updates, 25 CG steps, damping 0.1,
GAE 0.95; ``--normalize`` adds rl-zoo3's VecNormalize), one torch thread, n_envs 1 and 2. Each model is warmed up,
then timed on ``--steps`` env steps; the two libraries alternate in rounds so that machine noise hits both alike.
Prints env-steps/s end to end, the mean time of one ``train()``, and the ratios ours / sb3-contrib. A second table
compares VineTRPO's simulator steps/s (trunk plus branches) with single-path TRPO's.

Equal effective trust region: sb3-contrib's ``target_kl`` is averaged over the 3 action dimensions, so its 0.01 is
our 0.03 (the paper's whole-distribution KL).

    python benchmarks/speed.py --steps 20480 --rounds 3 [--normalize]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from sb3_contrib import TRPO as ContribTRPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import VecNormalize

if not __package__:  # run as a file, python benchmarks/speed.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from reporting.results_io import ROOT, write_result
from sb3_trpo_ext import TRPO, VineTRPO

ZOO_SETTINGS: dict[str, Any] = dict(
    n_steps=1024, batch_size=128, gamma=0.99, gae_lambda=0.95, cg_max_steps=25, cg_damping=0.1, n_critic_updates=20,
    learning_rate=1e-3,
)  # fmt: skip


VINE_SETTINGS: dict[str, Any] = dict(n_rollout_states=64, n_actions_per_state=4, rollout_length=50)
LIBRARIES = {"sb3-contrib": ContribTRPO, "sb3-trpo-ext": TRPO}


def timed_class(cls: type) -> type:
    """
    :param cls: an algorithm class
    :return: its subclass that keeps the wall time of each ``train()`` in ``train_seconds``
    """

    class Timed(cls):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.train_seconds: list[float] = []

        def train(self) -> None:
            start = time.perf_counter()
            super().train()
            self.train_seconds.append(time.perf_counter() - start)

    Timed.__name__ = Timed.__qualname__ = f"Timed{cls.__name__}"
    return Timed


def make_env(n_envs: int, seed: int, normalize: bool) -> Any:
    env = make_vec_env("Hopper-v5", n_envs=n_envs, seed=seed)
    return VecNormalize(env, gamma=0.99) if normalize else env


def build(cls: type, n_envs: int, seed: int, target_kl: float, normalize: bool) -> Any:
    """:return: a timed ``cls`` (:func:`timed_class`) with the zoo's settings on Hopper-v5"""
    return timed_class(cls)("MlpPolicy", make_env(n_envs, seed, normalize), seed=seed, target_kl=target_kl, **ZOO_SETTINGS)


def timed_learn(model: Any, steps: int) -> float:
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    return time.perf_counter() - start


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20480, help="timed env steps per round and model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n-envs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--normalize", action="store_true", help="wrap the envs in VecNormalize (as rl-zoo3 does)")
    parser.add_argument("--skip-vine", action="store_true", help="skip the VineTRPO vs TRPO table")
    parser.add_argument("--only-vine", action="store_true", help="only the VineTRPO vs TRPO table")
    parser.add_argument("--output", default=None, help="results JSON (default: benchmarks/results/speed[_normalize].json)")
    parser.add_argument("--label", default="", help="a name for this code version, stored in the results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    th.set_num_threads(1)
    gym.logger.min_level = gym.logger.ERROR  # gymnasium's log level (its logger has no setter): errors only
    act_dim = 3  # Hopper-v5
    normalized = "with VecNormalize" if args.normalize else "no VecNormalize"
    print(f"torch {th.__version__}, 1 thread, Hopper-v5 ({normalized}), {args.steps} steps x {args.rounds} rounds per model")
    data: dict[str, Any] = {
        "label": args.label,
        "normalize": args.normalize,
        "steps": args.steps,
        "rounds": args.rounds,
        "rows": [] if args.only_vine else library_rows(args, act_dim),
        "vine": [] if args.skip_vine else vine_vs_single_path(args, act_dim),
    }
    default = os.path.join(ROOT, "benchmarks", "results", "speed_normalize.json" if args.normalize else "speed.json")
    write_result(args.output or default, data)
    print(f"Wrote {args.output or default}")


def library_rows(args: argparse.Namespace, act_dim: int) -> list[dict[str, Any]]:
    """Env-steps/s end to end and the mean ``train()`` time of both libraries, per ``n_envs``, alternating in rounds."""
    print(f"{'n_envs':>6} {'lib':>12} {'steps/s':>9} {'train() ms':>11}")
    rows: list[dict[str, Any]] = []
    for n_envs in args.n_envs:
        # equal trust regions: sb3-contrib's target_kl is averaged over the action dimensions
        models = {
            name: build(cls, n_envs, 0, target_kl=0.01 * (act_dim if name == "sb3-trpo-ext" else 1), normalize=args.normalize)
            for name, cls in LIBRARIES.items()
        }
        for model in models.values():
            timed_learn(model, 2 * 1024 * n_envs)  # warm-up
            model.train_seconds.clear()
        seconds = {name: 0.0 for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                seconds[name] += timed_learn(model, args.steps)
        rates, trains = {}, {}
        for name, model in models.items():
            rates[name] = args.rounds * args.steps / seconds[name]
            trains[name] = 1000 * float(np.mean(model.train_seconds))
            print(f"{n_envs:>6} {name:>12} {rates[name]:>9.0f} {trains[name]:>11.1f}")
            rows.append({"n_envs": n_envs, "lib": name, "steps_per_s": rates[name], "train_ms": trains[name]})
        print(
            f"{n_envs:>6} {'ratio':>12} {rates['sb3-trpo-ext'] / rates['sb3-contrib']:>8.2f}x "
            f"{trains['sb3-trpo-ext'] / trains['sb3-contrib']:>10.2f}x   (steps/s: higher is better; train(): lower)"
        )
    return rows


def vine_vs_single_path(args: argparse.Namespace, act_dim: int) -> list[dict[str, Any]]:
    """Simulator steps/s (trunk + branches) of VineTRPO vs single-path TRPO, same env and n_envs."""
    print("\nVineTRPO (N=64 states, K=4, m=50) vs TRPO: simulator steps/s, Hopper-v5")
    print(f"{'n_envs':>6} {'TRPO':>9} {'VineTRPO':>9} {'ratio':>7}")
    rows: list[dict[str, Any]] = []
    for n_envs in args.n_envs:
        models = {}
        for name, cls, extra in (("TRPO", TRPO, {}), ("VineTRPO", VineTRPO, VINE_SETTINGS)):
            env = make_env(n_envs, 0, args.normalize)
            models[name] = cls("MlpPolicy", env, seed=0, target_kl=0.01 * act_dim, **ZOO_SETTINGS, **extra)
            timed_learn(models[name], 2 * 1024 * n_envs)  # warm-up
        steps = {name: 0 for name in models}
        seconds = {name: 0.0 for name in models}
        for _ in range(args.rounds):  # alternate, so that machine noise hits both alike
            for name, model in models.items():
                before = model.num_timesteps
                seconds[name] += timed_learn(model, args.steps)
                steps[name] += model.num_timesteps - before
        rates = {name: steps[name] / seconds[name] for name in models}
        print(f"{n_envs:>6} {rates['TRPO']:>9.0f} {rates['VineTRPO']:>9.0f} {rates['VineTRPO'] / rates['TRPO']:>6.2f}x")
        rows.append({"n_envs": n_envs, "trpo_steps_per_s": rates["TRPO"], "vine_steps_per_s": rates["VineTRPO"]})
    return rows


if __name__ == "__main__":
    main()
