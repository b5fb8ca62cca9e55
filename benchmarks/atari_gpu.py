"""
The Atari checks that run on a GPU machine (issue 25, item 4), in one bounded call: results as JSON lines in
``$OUT/atari_gpu.jsonl`` and one curve file per run, for ``benchmarks/results/atari_gpu/``.

- ``speed``: BreakoutNoFrameskip-v4, 16 ``SubprocVecEnv`` workers, the ``atari`` entry of ``hyperparams/trpo_ext.yml``
  for ours and the keys sb3-contrib's TRPO shares with it for sb3-contrib (``benchmarks/speed_atari.py --settings
  yaml``'s split), on cuda, alternating rounds; env-steps/s end to end.
- ``learning``: runs of ours on a game with 8 ``SubprocVecEnv`` workers each, in parallel, each stopped at a step
  budget or a time limit: the full-game scores SB3's ``Monitor`` reports (unclipped, below ``AtariWrapper``) against
  env steps. ``--config yaml`` is today's entry; ``--config before`` the entry as it was before the fast CPU path
  (5 critic epochs, plain shrinking line search, float32), for the before/after comparison at equal steps.

Run on the GPU machine from the checkout's root with ``.devrun/`` made by ``../shared/gpu/prepare.sh`` and this file
copied into it::

    python3 .devrun/atari_gpu.py --part speed
    python3 .devrun/atari_gpu.py --part learning --config before --seeds 0 1 --steps 600000 --seconds 420
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from typing import Any

import numpy as np
import torch as th

OUT = os.environ.get("OUT", "/tmp/out")
GAME = "BreakoutNoFrameskip-v4"
BEFORE = {"n_critic_updates": 5, "line_search_rescale_on_kl": False, "precision": "float32"}
"""What the fast CPU path changed in the ``atari`` entry (2026-12-04): the entry as it was is the YAML plus these."""


def emit(**row: Any) -> None:
    row["t"] = round(time.time(), 1)
    line = json.dumps(row, default=str)
    print(line, flush=True)
    with open(os.path.join(OUT, "atari_gpu.jsonl"), "a") as f:
        f.write(line + "\n")


def yaml_entry() -> dict[str, Any]:
    import yaml
    from torch import nn

    here = os.path.dirname(os.path.abspath(__file__))
    for root in (os.path.join(here, "project"), os.path.dirname(here)):
        path = os.path.join(root, "hyperparams", "trpo_ext.yml")
        if os.path.exists(path):
            break
    with open(path) as f:
        entry = dict(yaml.safe_load(f)["atari"])
    for key in ("env_wrapper", "frame_stack", "policy", "n_envs", "n_timesteps"):
        entry.pop(key, None)
    if isinstance(entry.get("policy_kwargs"), str):
        entry["policy_kwargs"] = eval(entry["policy_kwargs"], {"nn": nn, "th": th})
    return entry


def atari_env(game: str, n_envs: int, seed: int) -> Any:
    import ale_py
    import gymnasium as gym
    from stable_baselines3.common.env_util import make_atari_env
    from stable_baselines3.common.vec_env import SubprocVecEnv, VecFrameStack

    gym.register_envs(ale_py)
    kwargs = dict(vec_env_cls=SubprocVecEnv, vec_env_kwargs=dict(start_method="fork"))
    return VecFrameStack(make_atari_env(game, n_envs=n_envs, seed=seed, **kwargs), 4)


def speed(args: argparse.Namespace) -> None:
    import inspect

    import sb3_contrib

    import sb3_trpo_ext

    ours = yaml_entry()
    contrib = {k: v for k, v in ours.items() if k in inspect.signature(sb3_contrib.TRPO.__init__).parameters}
    models = {
        "ours": sb3_trpo_ext.TRPO("CnnPolicy", atari_env(GAME, args.n_envs, 0), seed=0, device=args.device, **ours),
        "sb3-contrib": sb3_contrib.TRPO("CnnPolicy", atari_env(GAME, args.n_envs, 0), seed=0, device=args.device, **contrib),
    }
    emit(part="speed", backends=str(models["ours"].backends), ours=ours, contrib=contrib, n_envs=args.n_envs)
    per_update = ours["n_steps"] * args.n_envs
    for model in models.values():
        model.learn(per_update)
    rates: dict[str, list[float]] = {name: [] for name in models}
    for round_index in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.learn(2 * per_update, reset_num_timesteps=False)
            rates[name].append(2 * per_update / (time.perf_counter() - start))
            emit(part="speed", round=round_index, lib=name, steps_per_s=round(rates[name][-1], 1))
    best = {name: max(values) for name, values in rates.items()}
    emit(
        part="speed",
        summary=True,
        **{k: round(v, 1) for k, v in best.items()},
        ratio=round(best["ours"] / best["sb3-contrib"], 2),
    )


def learn_one(game: str, config: str, seed: int, steps: int, seconds: float, device: str, n_envs: int) -> None:
    from stable_baselines3.common.callbacks import BaseCallback

    import sb3_trpo_ext

    th.set_num_threads(2)
    settings = {**yaml_entry(), **(BEFORE if config == "before" else {})}

    class Scores(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.start = time.time()
            self.rows: list[tuple[int, float, float]] = []

        def _on_step(self) -> bool:
            for info in self.locals.get("infos", []):
                if "episode" in info:
                    self.rows.append((self.num_timesteps, round(time.time() - self.start, 1), float(info["episode"]["r"])))
            return time.time() - self.start < seconds

    model = sb3_trpo_ext.TRPO("CnnPolicy", atari_env(game, n_envs, seed), seed=seed, device=device, **settings)
    scores = Scores()
    model.learn(steps, callback=scores)
    name = f"{game.split('NoFrameskip')[0]}_{config}_seed{seed}"
    curve = dict(game=game, config=config, seed=seed, device=device, settings=settings, n_envs=n_envs,
                 backends=str(model.backends), num_timesteps=model.num_timesteps, rows=scores.rows)  # fmt: skip
    with open(os.path.join(OUT, f"curve_{name}.json"), "w") as f:
        json.dump(curve, f, default=str)
    last = [r for _, _, r in scores.rows[-100:]]
    emit(part="learning", run=name, steps=model.num_timesteps, episodes=len(scores.rows),
         last100_mean=round(float(np.mean(last)), 2) if last else None,
         steps_per_s=round(model.num_timesteps / max(1e-9, time.time() - scores.start), 1))  # fmt: skip


def learning(args: argparse.Namespace) -> None:
    context = multiprocessing.get_context("spawn")
    runs = [(args.game, args.config, seed, args.steps, args.seconds, args.device, args.n_envs) for seed in args.seeds]
    processes = [context.Process(target=learn_one, args=run) for run in runs]
    for process in processes:
        process.start()
    for process in processes:
        process.join(args.seconds + 180)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["speed", "learning"], required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n-envs", type=int, default=None, help="default: 16 for speed, 8 for learning")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--game", default=GAME)
    parser.add_argument("--config", choices=["yaml", "before"], default="yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=600_000)
    parser.add_argument("--seconds", type=float, default=420)
    arguments = parser.parse_args()
    arguments.n_envs = arguments.n_envs or (16 if arguments.part == "speed" else 8)
    os.makedirs(OUT, exist_ok=True)
    emit(part=arguments.part, start=True, torch=th.__version__, cuda=th.cuda.is_available(), cpus=os.cpu_count(),
         gpu=th.cuda.get_device_name(0) if th.cuda.is_available() else None)  # fmt: skip
    {"speed": speed, "learning": learning}[arguments.part](arguments)
