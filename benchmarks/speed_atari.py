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

The other timers wrap the models' own methods (no library module is patched); their own cost is a few
``perf_counter`` calls per update.

    python benchmarks/speed_atari.py --steps 2048 --rounds 3   # the defaults, ~6 minutes on one core
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import ale_py
import gymnasium as gym
import numpy as np
import torch as th
from sb3_contrib import TRPO as ContribTRPO
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack

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


def make_env(seed: int) -> Any:
    gym.register_envs(ale_py)
    return VecFrameStack(make_atari_env(ENV_ID, n_envs=N_ENVS, seed=seed), n_stack=4)


def timed(function: Callable[..., Any], timers: dict[str, float], key: str) -> Callable[..., Any]:
    """``function`` with the seconds spent in it added to ``timers[key]`` and its calls counted."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            timers[key] += time.perf_counter() - start
            timers[key + "_calls"] += 1

    return wrapper


def build(name: str, seed: int) -> Any:
    cls = TRPO if name == OURS else ContribTRPO
    model: Any = cls("CnnPolicy", make_env(seed), seed=seed, device="cpu", **SETTINGS)
    model.timers = defaultdict(float)
    model.train_seconds = []
    model.collect_rollouts = timed(model.collect_rollouts, model.timers, "rollout")
    original_train = model.train

    def timed_train() -> None:
        start = time.perf_counter()
        original_train()
        model.train_seconds.append(time.perf_counter() - start)
        if name == OURS:  # the model's own timings of this update, recorded in train() and not dumped yet
            logged = model.logger.name_to_value
            model.timers["policy_step"] += logged["time/policy_step_s"]
            model.timers["critic"] += logged["time/critic_fit_s"]

    model.train = timed(timed_train, model.timers, "train")
    if name == CONTRIB:
        model.hessian_vector_product = timed(model.hessian_vector_product, model.timers, "fisher_products")
    return model


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2048, help="timed env steps per round and model (1024 per update)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=None, help="results table (default: benchmarks/results/speed_atari.txt)")
    parser.add_argument("--label", default="", help="a name for this code version, stored in the results")
    args = parser.parse_args()
    th.set_num_threads(1)
    gym.logger.min_level = 40
    lines: list[str] = []

    def report(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    report(
        f"torch {th.__version__}, 1 thread, {ENV_ID} (AtariWrapper, 4 stacked frames), n_envs {N_ENVS}, CnnPolicy "
        f"(separate actor and critic CNNs), n_steps 128, {SETTINGS['cg_max_steps']} CG steps, "
        f"{SETTINGS['n_critic_updates']} critic epochs; {args.steps} steps x {args.rounds} rounds per model"
    )
    models = {CONTRIB: build(CONTRIB, 0), OURS: build(OURS, 0)}
    for model in models.values():
        timed_learn(model, SAMPLES_PER_UPDATE)  # warm-up: one update
        model.timers.clear()
        model.train_seconds.clear()
    for round_index in range(args.rounds):
        for name, model in models.items():
            seconds = timed_learn(model, args.steps)
            print(f"  round {round_index + 1}: {name} {args.steps / seconds:.1f} steps/s", flush=True)

    report(f"{'lib':>12} {'steps/s':>9} {'train() s':>10}")
    rates, trains = {}, {}
    for name, model in models.items():
        rates[name] = args.rounds * args.steps / model.timers["learn"]
        trains[name] = float(np.mean(model.train_seconds))
        report(f"{name:>12} {rates[name]:>9.1f} {trains[name]:>10.2f}")
    report(
        f"{'ratio':>12} {rates[OURS] / rates[CONTRIB]:>8.2f}x {trains[OURS] / trains[CONTRIB]:>9.2f}x"
        "   (steps/s: higher is better; train(): lower)"
    )

    report()
    report(f"Seconds per update ({SAMPLES_PER_UPDATE} env steps), timed rounds:")
    parts = {name: breakdown(name, model) for name, model in models.items()}
    report(f"{'part':>28} {CONTRIB:>12} {OURS:>12}")
    for key in PARTS[OURS] + [k for k in PARTS[CONTRIB] if k not in PARTS[OURS]]:
        cells = []
        for name in models:
            value = parts[name].get(key)
            cells.append("-" if value is None else f"{value:6.2f} ({100 * value / parts[name]['total']:3.0f}%)")
        report(f"{PART_NAMES[key]:>28} {cells[0]:>12} {cells[1]:>12}")
    report(f"{'total':>28} {parts[CONTRIB]['total']:>12.2f} {parts[OURS]['total']:>12.2f}")
    report(f"{'Fisher products / update':>28} {parts[CONTRIB]['products_per_update']:>12.1f}")
    report(f"backends (ours): {models[OURS].backends}")

    default = os.path.join(os.path.dirname(__file__), "results", "speed_atari.txt")
    output = args.output or default
    with open(output, "w") as f:
        f.write("\n".join(lines) + "\n")
    results = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
        "torch": th.__version__,
        "label": args.label,
        "command": "python benchmarks/speed_atari.py " + " ".join(sys.argv[1:]),
        "steps": args.steps,
        "rounds": args.rounds,
        "rows": [{"lib": name, "steps_per_s": rates[name], "train_s": trains[name]} for name in models],
        "seconds_per_update": parts,
    }
    with open(os.path.splitext(output)[0] + ".json", "w") as f:
        json.dump(results, f, indent=2)
    print(f"Wrote {output} and {os.path.splitext(output)[0]}.json")


if __name__ == "__main__":
    main()
