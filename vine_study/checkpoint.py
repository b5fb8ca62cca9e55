"""
The policies the vine study looks at: TRPO trained with the task's YAML entry and saved at the plan's step counts
(:func:`train_checkpoints`), loaded as a :class:`Checkpoint` that builds the study's envs and models.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize

from reporting.results_io import read_result, write_result
from sb3_trpo_ext import TRPO, VineTRPO
from vine_study.plan import TRAINING_SEED, TaskPlan, constructor_keywords, yaml_entry


@dataclass
class Checkpoint:
    """
    A policy to study: its weights, its frozen VecNormalize statistics and the TRPO settings it was trained with.

    :param task: the env id
    :param name: ``early``, ``mid`` (or anything, for tests)
    :param state_dict: the policy's weights (actor and critic)
    :param keywords: TRPO's keywords (from ``hyperparams/trpo_ext.yml``)
    :param n_envs: the YAML's ``n_envs``
    :param vec_normalize_path: the saved VecNormalize statistics (None: the entry does not normalize)
    :param info: what is known about it (training steps, evaluation return)
    """

    task: str
    name: str
    state_dict: dict[str, th.Tensor]
    keywords: dict[str, Any]
    n_envs: int
    vec_normalize_path: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def untrained(cls, task: str, seed: int = 0) -> Checkpoint:
        """
        :param task: the env id
        :param seed: the seed of the initial weights
        :return: TRPO's initial policy on ``task`` (observations not normalized)
        """
        entry = yaml_entry("trpo_ext.yml", task)
        keywords = constructor_keywords(entry)
        model = TRPO(entry.get("policy", "MlpPolicy"), make_vec_env(task, n_envs=1, seed=seed), seed=seed, **keywords)
        return cls(task, "untrained", model.policy.state_dict(), keywords, int(entry.get("n_envs", 1)))

    @classmethod
    def load(cls, task: str, name: str, directory: str) -> Checkpoint:
        """
        :param task: the env id
        :param name: the checkpoint's name
        :param directory: where :func:`train_checkpoints` saved it
        :return: the checkpoint
        """
        entry = yaml_entry("trpo_ext.yml", task)
        state_dict = th.load(os.path.join(directory, "policy.pt"), map_location="cpu", weights_only=True)
        stats = os.path.join(directory, "vec_normalize.pkl")
        info = read_result(os.path.join(directory, "info.json"))["data"]
        return cls(
            task,
            name,
            state_dict,
            constructor_keywords(entry),
            int(entry.get("n_envs", 1)),
            stats if os.path.exists(stats) else None,
            info,
        )

    @property
    def policy(self) -> str:
        return "MlpPolicy"

    def make_env(self, n_envs: int, seed: int) -> VecEnv:
        """
        :param n_envs: number of envs
        :param seed: seed of the first env (the others get the next ones)
        :return: a DummyVecEnv of the task, with the checkpoint's VecNormalize statistics frozen
        """
        env: VecEnv = make_vec_env(self.task, n_envs=n_envs, seed=seed, vec_env_cls=DummyVecEnv)
        if self.vec_normalize_path is not None:
            env = VecNormalize.load(self.vec_normalize_path, env)
            env.training = False
        return env

    def trpo(self, env: VecEnv, seed: int) -> TRPO:
        """:param env: the env
        :param seed: the model's seed
        :return: a TRPO model on ``env`` with the checkpoint's weights"""
        model = TRPO(self.policy, env, seed=seed, **self.keywords)
        model.policy.load_state_dict(self.state_dict)
        return model

    def vine(self, env: VecEnv, seed: int, vine_keywords: dict[str, Any]) -> VineTRPO:
        """
        :param env: the env
        :param seed: the model's seed
        :param vine_keywords: the vine's keywords (``VINE_KEYS``)
        :return: a VineTRPO model on ``env`` with the checkpoint's weights (same architecture, critic included) and
            the checkpoint's TRPO settings otherwise (discount, CG steps and damping, gSDE)
        """
        keywords = {key: value for key, value in self.keywords.items() if key not in ("n_steps", "fisher_sample_fraction")}
        keywords["batch_size"] = min(int(keywords.get("batch_size", 128)), int(vine_keywords["n_steps"]))  # critic unused
        model = VineTRPO(self.policy, env, seed=seed, **keywords, **vine_keywords)
        model.policy.load_state_dict(self.state_dict)
        return model


def time_limit(task: str) -> int:
    """:param task: the env id
    :return: its episodes' time limit"""
    spec = gym.spec(task)
    return int(spec.max_episode_steps or 1000)


def train_checkpoints(task: str, plan: TaskPlan, directory: str, names: Sequence[str]) -> None:
    """
    Train TRPO with the task's YAML entry (seed 0) and save the checkpoints of ``plan`` that are missing (one run,
    saved as it passes each checkpoint's step count).

    :param task: the env id
    :param plan: the task's plan
    :param directory: ``{directory}/{task}/{name}/``
    :param names: the checkpoints wanted
    """
    wanted = sorted((steps, name) for name, steps in plan.checkpoint_steps.items() if name in names)
    if all(os.path.exists(os.path.join(directory, task, name, "info.json")) for _, name in wanted):
        return
    entry = yaml_entry("trpo_ext.yml", task)
    keywords = constructor_keywords(entry)
    env: VecEnv = make_vec_env(task, n_envs=int(entry.get("n_envs", 1)), seed=TRAINING_SEED)
    if entry.get("normalize"):
        env = VecNormalize(env, gamma=float(keywords.get("gamma", 0.99)))
    model = TRPO(entry.get("policy", "MlpPolicy"), env, seed=TRAINING_SEED, **keywords)
    start = time.perf_counter()
    for steps, name in wanted:
        model.learn(max(0, steps - model.num_timesteps), reset_num_timesteps=model.num_timesteps == 0)
        mean, std = save_checkpoint(model, task, os.path.join(directory, task, name))
        info = {
            "task": task,
            "checkpoint": name,
            "training_steps": int(model.num_timesteps),
            "planned_steps": steps,
            "seed": TRAINING_SEED,
            "hyperparams": "hyperparams/trpo_ext.yml",
            "eval_return_mean": mean,
            "eval_return_std": std,
            "eval_episodes": 10,
            "training_wall_s": time.perf_counter() - start,
            "torch_threads": th.get_num_threads(),
        }
        write_result(os.path.join(directory, task, name, "info.json"), info, git_paths=("sb3_trpo_ext",))
        print(f"{task} {name}: {model.num_timesteps} steps, eval return {mean:.1f} +- {std:.1f}", flush=True)


def save_checkpoint(model: TRPO, task: str, folder: str) -> tuple[float, float]:
    """
    Save the policy's weights (and its env's VecNormalize statistics) into ``folder`` and evaluate it.

    :param model: the model in training
    :param task: the env id
    :param folder: the checkpoint's folder
    :return: the mean and std of its return over 10 deterministic episodes (the training env's statistics, frozen)
    """
    os.makedirs(folder, exist_ok=True)
    th.save(model.policy.state_dict(), os.path.join(folder, "policy.pt"))
    env = model.get_env()
    eval_env: VecEnv = make_vec_env(task, n_envs=1, seed=TRAINING_SEED + 1000)
    if isinstance(env, VecNormalize):
        env.save(os.path.join(folder, "vec_normalize.pkl"))
        eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
        eval_env.obs_rms = env.obs_rms.copy()
    mean, std = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    return float(mean), float(std)
