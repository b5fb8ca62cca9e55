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

- ours: rollout (``collect_rollouts``), Fisher setup (the product's construction, ``_fisher_vector_product``),
  Fisher products (time inside the function it returns: the CG iterations and the ``s^T F s`` product), critic fit
  (``fit_critic``), the rest of ``train()`` (policy forward and gradient, CG vector algebra, line search), and the
  rest of ``learn()`` (logging, callbacks);
- sb3-contrib: rollout, Fisher products (time inside its ``hessian_vector_product``; the graph of the KL gradient
  it differentiates is built in "rest of train()"), the rest of ``train()`` (critic fit included), the rest of
  ``learn()``.

The timers are wrappers set up by this script only (nothing in the library changes); their own cost is a few
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

import sb3_trpo_ext.common.base as ours_base
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
    OURS: ["rollout", "fisher_setup", "fisher_products", "critic", "train_rest", "learn_rest"],
    CONTRIB: ["rollout", "fisher_products", "train_rest", "learn_rest"],
}
PART_NAMES = {
    "rollout": "rollout (collect_rollouts)",
    "fisher_setup": "Fisher setup",
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


# our critic fit is a module-level function called by the base class: one wrapper, timers looked up by policy
_CRITIC_TIMERS: dict[int, dict[str, float]] = {}
_original_fit_critic = ours_base.fit_critic


def _timed_fit_critic(backend: Any, policy: Any, *args: Any, **kwargs: Any) -> Any:
    return timed(_original_fit_critic, _CRITIC_TIMERS[id(policy)], "critic")(backend, policy, *args, **kwargs)


ours_base.fit_critic = _timed_fit_critic  # type: ignore[assignment]


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

    model.train = timed(timed_train, model.timers, "train")
    if name == OURS:
        _CRITIC_TIMERS[id(model.policy)] = model.timers
        make_product = model._fisher_vector_product

        def timed_make_product(*args: Any, **kwargs: Any) -> Callable[[th.Tensor], th.Tensor]:
            product = timed(make_product, model.timers, "fisher_setup")(*args, **kwargs)
            return timed(product, model.timers, "fisher_products")

        model._fisher_vector_product = timed_make_product
    else:
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
    parts = {"rollout": t["rollout"], "fisher_products": t["fisher_products"]}
    if name == OURS:
        parts.update(fisher_setup=t["fisher_setup"], critic=t["critic"])
        parts["train_rest"] = t["train"] - t["fisher_setup"] - t["fisher_products"] - t["critic"]
    else:
        parts["train_rest"] = t["train"] - t["fisher_products"]
    parts["learn_rest"] = t["learn"] - t["rollout"] - t["train"]
    per_update = {key: parts[key] / updates for key in PARTS[name]}
    per_update["total"] = t["learn"] / updates
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
    report(
        f"{'Fisher products / update':>28} {parts[CONTRIB]['products_per_update']:>12.1f} "
        f"{parts[OURS]['products_per_update']:>12.1f}"
    )
    report(
        f"{'s per Fisher product':>28} "
        + " ".join(f"{parts[name]['fisher_products'] / max(parts[name]['products_per_update'], 1):>12.2f}" for name in models)
    )
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
