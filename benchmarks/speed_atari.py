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

``--settings yaml`` runs the ``atari`` entry of ``hyperparams/trpo_ext.yml`` instead (n_steps 512: 4,096 samples per
update): ours with the whole entry, sb3-contrib with the keys it shares (every key but ours-only ones such as
``fisher_sample_fraction``, ``line_search_rescale_on_kl`` and ``precision``, which it does not have), so both run the
YAML's network, batch, trust region, damping, CG steps and critic epochs::

    python benchmarks/speed_atari.py --settings yaml --steps 4096 --rounds 2   # ~25 minutes on one core
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
if "--ours-from" in sys.argv:  # another checkout's sb3_trpo_ext as "ours" (e.g. the code before a change)
    sys.path.insert(0, os.path.abspath(sys.argv[sys.argv.index("--ours-from") + 1]))

from reporting.results_io import ROOT, write_result
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


BEFORE = {"n_critic_updates": 5, "line_search_rescale_on_kl": False, "precision": "float32"}
"""The ``atari`` entry before the fast CPU path (2026-12-04) is today's plus these (``--settings before``)."""


def yaml_settings(before: bool = False) -> dict[str, dict[str, Any]]:
    """:param before: the entry as it was before the fast CPU path (:data:`BEFORE`)
    :return: the keywords of each library under ``--settings yaml``: our YAML's ``atari`` entry (the keys the
        imported TRPO accepts), and the part of it sb3-contrib's TRPO accepts"""
    import inspect

    import yaml
    from torch import nn

    with open(os.path.join(ROOT, "hyperparams", "trpo_ext.yml")) as f:
        entry = dict(yaml.safe_load(f)["atari"])
    for key in ("env_wrapper", "frame_stack", "policy", "n_envs", "n_timesteps"):
        entry.pop(key, None)
    if isinstance(entry.get("policy_kwargs"), str):
        entry["policy_kwargs"] = eval(entry["policy_kwargs"], {"nn": nn, "th": th})
    if before:
        entry.update(BEFORE)
    ours_keys = set(inspect.signature(TRPO.__init__).parameters)
    contrib_keys = set(inspect.signature(ContribTRPO.__init__).parameters)
    return {
        OURS: {key: value for key, value in entry.items() if key in ours_keys},
        CONTRIB: {key: value for key, value in entry.items() if key in contrib_keys},
    }


def build(name: str, seed: int, settings: dict[str, Any]) -> Any:
    cls = TimedTRPO if name == OURS else TimedContribTRPO
    return cls("CnnPolicy", make_env(seed), seed=seed, device="cpu", **settings)


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


def measure(steps: int, rounds: int, settings: dict[str, dict[str, Any]], libs: Sequence[str]) -> dict[str, Any]:
    """:return: the models after a warm-up update and ``rounds`` timed rounds of ``steps`` steps, alternating"""
    models = {name: build(name, 0, settings[name]) for name in (CONTRIB, OURS) if name in libs}
    for model in models.values():
        timed_learn(model, model.n_steps * N_ENVS)  # warm-up: one update
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
    if len(models) == 2:
        lines.append(
            f"{'ratio':>12} {rates[OURS] / rates[CONTRIB]:>8.2f}x {trains[OURS] / trains[CONTRIB]:>9.2f}x"
            "   (steps/s: higher is better; train(): lower)"
        )
    any_model = next(iter(models.values()))
    lines += ["", f"Seconds per update ({any_model.n_steps * N_ENVS} env steps), timed rounds:"]
    parts = {name: breakdown(name, model) for name, model in models.items()}
    lines.append(f"{'part':>28} " + " ".join(f"{name:>12}" for name in models))
    for key in PARTS[OURS] + [k for k in PARTS[CONTRIB] if k not in PARTS[OURS]]:
        cells = []
        for name in models:
            value = parts[name].get(key)
            cells.append("-" if value is None else f"{value:6.2f} ({100 * value / parts[name]['total']:3.0f}%)")
        lines.append(f"{PART_NAMES[key]:>28} " + " ".join(f"{cell:>12}" for cell in cells))
    lines.append(f"{'total':>28} " + " ".join(f"{parts[name]['total']:>12.2f}" for name in models))
    if CONTRIB in parts:
        lines.append(f"{'Fisher products / update':>28} {parts[CONTRIB]['products_per_update']:>12.1f}")
    if OURS in models:
        lines.append(f"backends (ours): {getattr(models[OURS], 'backends', '?')}")
    rows = [{"lib": name, "steps_per_s": rates[name], "train_s": trains[name]} for name in models]
    return lines, {"rows": rows, "seconds_per_update": parts}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2048, help="timed env steps per round and model (1024 per update)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", default=None, help="results table (default: benchmarks/results/speed_atari.txt)")
    parser.add_argument("--label", default="", help="a name for this code version, stored in the results")
    parser.add_argument(
        "--settings",
        choices=["bench", "yaml", "before"],
        default="bench",
        help="this file's SETTINGS, our YAML's atari entry, or that entry before the fast CPU path",
    )
    parser.add_argument("--libs", nargs="+", choices=[OURS, CONTRIB], default=[OURS, CONTRIB])
    parser.add_argument("--ours-from", default=None, help="a checkout whose sb3_trpo_ext runs as ours (older code)")
    args = parser.parse_args(argv)
    th.set_num_threads(1)
    gym.logger.min_level = gym.logger.ERROR  # gymnasium's log level (its logger has no setter): errors only
    if args.settings == "bench":
        settings = {OURS: SETTINGS, CONTRIB: SETTINGS}
    else:
        settings = yaml_settings(before=args.settings == "before")
    ours = settings[OURS]
    title = (
        f"torch {th.__version__}, 1 thread, {ENV_ID} (AtariWrapper, 4 stacked frames), n_envs {N_ENVS}, CnnPolicy "
        f"({'the YAML atari entry: ' if args.settings == 'yaml' else ''}policy_kwargs {ours.get('policy_kwargs')}), "
        f"n_steps {ours['n_steps']}, {ours['cg_max_steps']} CG steps, {ours['n_critic_updates']} critic epochs, "
        f"ours-only keys {sorted(set(ours) - set(settings[CONTRIB]))}; {args.steps} steps x {args.rounds} rounds per model; "
        f"ours from {os.path.dirname(os.path.dirname(sys.modules['sb3_trpo_ext'].__file__ or ''))}"
    )
    print(title, flush=True)
    lines, data = tables(measure(args.steps, args.rounds, settings, args.libs), args.steps, args.rounds)
    print("\n".join(lines), flush=True)
    default_name = "speed_atari.txt" if args.settings == "bench" else f"speed_atari_{args.settings}.txt"
    output = args.output or os.path.join(ROOT, "benchmarks", "results", default_name)
    with open(output, "w") as f:
        f.write("\n".join([title, *lines]) + "\n")
    results = os.path.splitext(output)[0] + ".json"
    write_result(results, {"label": args.label, "settings": args.settings, "steps": args.steps, "rounds": args.rounds, **data})
    print(f"Wrote {output} and {results}")


if __name__ == "__main__":
    main()
