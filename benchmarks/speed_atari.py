"""
Speed on Atari: our TRPO vs sb3-contrib's TRPO, side by side in one process run.

BreakoutNoFrameskip-v4 through SB3's ``make_atari_env`` (AtariWrapper) with 4 stacked frames, n_envs 8, ``CnnPolicy``
with separate actor and critic NatureCNNs (``share_features_extractor=False``) for both libraries, n_steps 128 (1024
samples per update), critic batch 256, 5 critic epochs, 10 CG steps, damping 0.1, ``target_kl`` 0.01 (Discrete
actions: the two libraries' ``target_kl`` agree, so the trust regions are equal), ``fisher_sample_fraction`` left
at 1.0 (Fisher products on the whole batch, as sb3-contrib does), one torch thread.

Each model is warmed up for one update, then timed on ``--steps`` env steps per round; the two libraries alternate
in rounds so that machine noise hits both alike. Prints env-steps/s end to end, the mean time of one ``train()``,
the ratios ours / sb3-contrib, and where the time of one update goes:

- ours: rollout (``collect_rollouts``), the policy step (direction, Fisher products, CG, line search) and the critic
  fit, as the model logs them itself (``time/policy_step_s``, ``time/critic_fit_s``), the rest of ``train()``, and
  the rest of ``learn()`` (logging, callbacks); the Fisher paths alone are timed by ``benchmarks/fisher_paths.py``;
- sb3-contrib: rollout, Fisher products (time inside its ``hessian_vector_product``; the graph of the KL gradient
  it differentiates is built in "rest of train()"), the rest of ``train()`` (critic fit included), the rest of
  ``learn()``.

The other timers are overrides in timing subclasses of the two classes (:class:`TimedParts`; no library module or
instance is patched); their own cost is a few ``perf_counter`` calls per update.

    python benchmarks/speed_atari.py --steps 2048 --rounds 3   # the defaults, ~6 minutes on one core
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
import torch as th
from sb3_contrib import TRPO as ContribTRPO
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack

if not __package__:  # run as a file, python benchmarks/speed_atari.py: import the package from the repository root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks.results_io import ROOT, write_result
from sb3_trpo_ext import TRPO

ENV_ID = "BreakoutNoFrameskip-v4"
N_ENVS = 8
SETTINGS: dict[str, Any] = dict(
    n_steps=128, batch_size=256, gamma=0.99, gae_lambda=0.95, cg_max_steps=10, cg_damping=0.1, n_critic_updates=5,
    learning_rate=1e-3, target_kl=0.01, policy_kwargs=dict(share_features_extractor=False),
)  # fmt: skip
SAMPLES_PER_UPDATE = SETTINGS["n_steps"] * N_ENVS

OURS, CONTRIB = "sb3-trpo-ext", "sb3-contrib"
PARTS = {
    OURS: ["rollout", "policy_step", "critic", "train_rest", "learn_rest"],
    CONTRIB: ["rollout", "fisher_products", "train_rest", "learn_rest"],
}
PART_NAMES = {
    "rollout": "rollout (collect_rollouts)",
    "policy_step": "policy step",
    "fisher_products": "Fisher products",
    "critic": "critic fit",
    "train_rest": "rest of train()",
    "learn_rest": "rest of learn()",
}


class TimedParts:
    """
    Mixed into an algorithm class: the seconds of its ``collect_rollouts`` and ``train`` calls added to
    ``timers[key]`` and counted in ``timers[key + "_calls"]``, each ``train()``'s seconds in ``train_seconds``, and,
    for ours, the policy step's and critic fit's seconds the model logs itself (``time/policy_step_s``,
    ``time/critic_fit_s``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timers: defaultdict[str, float] = defaultdict(float)
        self.train_seconds: list[float] = []

    def timed(self, key: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            self.timers[key] += time.perf_counter() - start
            self.timers[key + "_calls"] += 1

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        return self.timed("rollout", super().collect_rollouts, *args, **kwargs)  # type: ignore[misc]

    def train(self) -> None:
        start = time.perf_counter()
        self.timed("train", super().train)  # type: ignore[misc]
        self.train_seconds.append(time.perf_counter() - start)
        if isinstance(self, TRPO):  # the model's own timings of this update, recorded in train() and not dumped yet
            logged = self.logger.name_to_value
            self.timers["policy_step"] += logged["time/policy_step_s"]
            self.timers["critic"] += logged["time/critic_fit_s"]


class TimedTRPO(TimedParts, TRPO):
    """Our TRPO, timed (:class:`TimedParts`)."""


class TimedContribTRPO(TimedParts, ContribTRPO):
    """sb3-contrib's TRPO, timed (:class:`TimedParts`), and the time inside its Fisher(-vector) products."""

    def hessian_vector_product(self, *args: Any, **kwargs: Any) -> Any:
        return self.timed("fisher_products", super().hessian_vector_product, *args, **kwargs)


def make_env(seed: int) -> Any:
    gym.register_envs(ale_py)
    return VecFrameStack(make_atari_env(ENV_ID, n_envs=N_ENVS, seed=seed), n_stack=4)


def build(name: str, seed: int) -> Any:
    cls = TimedTRPO if name == OURS else TimedContribTRPO
    return cls("CnnPolicy", make_env(seed), seed=seed, device="cpu", **SETTINGS)


def timed_learn(model: Any, steps: int) -> float:
    start = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    model.timers["learn"] += seconds
    return seconds


def breakdown(name: str, model: Any) -> dict[str, float]:
    """Seconds per update of each part (timed rounds only)."""
    t = model.timers
    updates = max(1, len(model.train_seconds))
    parts = {"rollout": t["rollout"]}
    if name == OURS:
        parts.update(policy_step=t["policy_step"], critic=t["critic"])
        parts["train_rest"] = t["train"] - t["policy_step"] - t["critic"]
    else:
        parts.update(fisher_products=t["fisher_products"])
        parts["train_rest"] = t["train"] - t["fisher_products"]
    parts["learn_rest"] = t["learn"] - t["rollout"] - t["train"]
    per_update = {key: parts[key] / updates for key in PARTS[name]}
    per_update["total"] = t["learn"] / updates
    if name == CONTRIB:
        per_update["products_per_update"] = t["fisher_products_calls"] / updates
    return per_update


def measure(steps: int, rounds: int) -> dict[str, Any]:
    """:return: both models after a warm-up update and ``rounds`` timed rounds of ``steps`` steps, alternating"""
    models = {CONTRIB: build(CONTRIB, 0), OURS: build(OURS, 0)}
    for model in models.values():
        timed_learn(model, SAMPLES_PER_UPDATE)  # warm-up: one update
        model.timers.clear()
        model.train_seconds.clear()
    for round_index in range(rounds):
        for name, model in models.items():
            seconds = timed_learn(model, steps)
            print(f"  round {round_index + 1}: {name} {steps / seconds:.1f} steps/s", flush=True)
    return models


def tables(models: dict[str, Any], steps: int, rounds: int) -> tuple[list[str], dict[str, Any]]:
    """:return: the lines of the results table, and the results' data (rates, train() times, parts per update)"""
    lines = [f"{'lib':>12} {'steps/s':>9} {'train() s':>10}"]
    rates = {name: rounds * steps / model.timers["learn"] for name, model in models.items()}
    trains = {name: float(np.mean(model.train_seconds)) for name, model in models.items()}
    lines += [f"{name:>12} {rates[name]:>9.1f} {trains[name]:>10.2f}" for name in models]
    lines.append(
        f"{'ratio':>12} {rates[OURS] / rates[CONTRIB]:>8.2f}x {trains[OURS] / trains[CONTRIB]:>9.2f}x"
        "   (steps/s: higher is better; train(): lower)"
    )
    lines += ["", f"Seconds per update ({SAMPLES_PER_UPDATE} env steps), timed rounds:"]
    parts = {name: breakdown(name, model) for name, model in models.items()}
    lines.append(f"{'part':>28} {CONTRIB:>12} {OURS:>12}")
    for key in PARTS[OURS] + [k for k in PARTS[CONTRIB] if k not in PARTS[OURS]]:
        cells = []
        for name in models:
            value = parts[name].get(key)
            cells.append("-" if value is None else f"{value:6.2f} ({100 * value / parts[name]['total']:3.0f}%)")
        lines.append(f"{PART_NAMES[key]:>28} {cells[0]:>12} {cells[1]:>12}")
    lines.append(f"{'total':>28} {parts[CONTRIB]['total']:>12.2f} {parts[OURS]['total']:>12.2f}")
    lines.append(f"{'Fisher products / update':>28} {parts[CONTRIB]['products_per_update']:>12.1f}")
    lines.append(f"backends (ours): {models[OURS].backends}")
    rows = [{"lib": name, "steps_per_s": rates[name], "train_s": trains[name]} for name in models]
    return lines, {"rows": rows, "seconds_per_update": parts}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2048, help="timed env steps per round and model (1024 per update)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=None, help="results table (default: benchmarks/results/speed_atari.txt)")
    parser.add_argument("--label", default="", help="a name for this code version, stored in the results")
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    gym.logger.min_level = gym.logger.ERROR  # gymnasium's log level (its logger has no setter): errors only
    title = (
        f"torch {th.__version__}, 1 thread, {ENV_ID} (AtariWrapper, 4 stacked frames), n_envs {N_ENVS}, CnnPolicy "
        f"(separate actor and critic CNNs), n_steps 128, {SETTINGS['cg_max_steps']} CG steps, "
        f"{SETTINGS['n_critic_updates']} critic epochs; {args.steps} steps x {args.rounds} rounds per model"
    )
    print(title, flush=True)
    lines, data = tables(measure(args.steps, args.rounds), args.steps, args.rounds)
    print("\n".join(lines), flush=True)
    output = args.output or os.path.join(ROOT, "benchmarks", "results", "speed_atari.txt")
    with open(output, "w") as f:
        f.write("\n".join([title, *lines]) + "\n")
    results = os.path.splitext(output)[0] + ".json"
    write_result(results, {"label": args.label, "steps": args.steps, "rounds": args.rounds, **data})
    print(f"Wrote {output} and {results}")


if __name__ == "__main__":
    main()
