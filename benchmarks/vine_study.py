"""
The vine method's gradient quality per simulator step, against single path (GAE).

Question: for a given number of simulator steps, how close is a policy-gradient estimate to the gradient the policy
really has? "Close" is the cosine similarity to a reference direction computed from a very large batch, for the plain
gradient and for the natural-gradient direction (conjugate-gradient solution) TRPO steps along.

Design (and the choices the issue left open):

- **Checkpoints.** For each task, ``sb3_trpo_ext.TRPO`` trained with the task's entry of ``hyperparams/trpo_ext.yml``
  (seed 0, one run saved at two points): ``early`` (learning under way) and ``mid`` (most of the way): CartPole-v1
  3K / 10K steps (deterministic evaluation return about 200 / 450; it is solved at about 10K-20K, so a later
  checkpoint would study a converged policy), Pendulum-v1 20K / 40K (about -1100 / -400; solved at about 50K),
  Hopper-v5 50K / 200K. The exact counts are whole iterations (``info.json``). Saved under
  ``benchmarks/results/vine_study/checkpoints/{task}/{name}/``: ``policy.pt`` (the policy's ``state_dict``; ``*.zip``
  is git-ignored in this repository), ``vec_normalize.pkl`` where the entry normalizes, and ``info.json`` (10
  deterministic evaluation episodes). The study's envs use those VecNormalize statistics frozen
  (``training=False``), observations *and* rewards: the frozen reward scale is one positive constant, which changes
  no direction, but keeps the rewards on the scale the checkpoint's critic was fitted to (GAE and the vine's
  bootstrap at the cut both add critic values to rewards).
- **State distribution.** Every estimate starts from freshly seeded envs that first run the checkpoint's policy for a
  random burn-in of ``L`` to ``2L`` steps (``L`` the task's time limit), so that batches start at random points of
  their episodes as they do during training. Burn-in steps are not counted (training's envs are already running).
- **Reference** (per checkpoint): the gradient of the single-path surrogate TRPO maximizes (normalized GAE
  advantages, the checkpoint's own critic, exactly ``TRPO.train``'s batch) on chunks of ``E`` envs x ``T`` steps
  with independent seeds, collected until two independent halves (even vs odd chunks, each normalized on its own)
  have gradient cosine >= 0.95 or a cap is hit; the natural-gradient reference is the CG solution
  (``cg_max_steps``, ``cg_damping`` of the YAML) of the Fisher system for that gradient, with the analytic Fisher on
  up to ``fisher_states`` states drawn from the batch (the Fisher is an average over states; 64K states estimate it
  far better than the gradient needs). A second, Monte Carlo reference (GAE with lambda = 1, the same samples) is
  the unbiased policy gradient the vine also estimates; the cosine between the two tells how much GAE's bias alone
  moves the single-path target. The half-vs-half cosine ``h`` is reported as the reference's own quality; if the
  halves' noise is independent, the full reference's cosine to its noise-free direction is ``sqrt(2h / (1 + h))``.
- **Estimators**, each as a function of simulator steps (every ``env.step``: trunk and branch steps for the vine),
  ``R`` repeats with different seeds (the same seeds across configurations: common random numbers between them):
  single path, batches of 512 ... 64K steps on the YAML's ``n_envs``, the surrogate and Fisher as ``TRPO.train``
  builds them (``fisher_sample_fraction`` of the YAML); vine, a ``VineTRPO`` with the checkpoint's weights (same
  architecture, critic included), one ``collect_rollouts`` (trunk -> rollout set -> branches -> ``vine_batch``), the
  gradient of ``vine_batch.surrogate`` and the CG solution of ``VineTRPO._fisher_vector_product`` on the rollout set,
  with the CG settings of the reference (so that the two families differ only in their estimates). Baseline vine per
  task: the ``hyperparams/vine_trpo.yml`` entry for CartPole and Pendulum; for Hopper the package defaults (N 64, K 4,
  m 50, bootstrapped, trunk 1024) instead of the paper-sized entry (266K simulator steps per iteration, beyond this
  study's CPU budget). Then one change at a time (K, m, no bootstrap, no common random numbers) and a sweep of N
  with the trunk scaled along (``n_steps = max(trunk, N x trunk / N_baseline)``, the baseline's states per trunk step)
  for the cosine-vs-steps curve. Not run: ``action_sampling`` on CartPole (with 2 actions every K >= 2 rolls out
  every action and uses Eq. 15 whatever ``q`` is; K < 2 is rejected) and K on CartPole for the same reason;
  ``action_sampling="uniform"`` is for discrete spaces only.
- **Bias check.** Besides the mean cosine, each configuration stores the mean pairwise cosine ``p`` of its repeats
  (its self-consistency). If the estimates are their expectation plus independent noise, the cosine of that
  expectation to the reference's noise-free direction is about ``mean cosine / (sqrt(p) * sqrt(2h / (1 + h)))``
  (the "implied" column): near 1 for an estimator of the same direction, clearly below 1 for one that estimates
  another direction (a truncated Q, say), whatever its variance.
- **Cosines.** Three per estimate: the gradient's and the CG direction's in the actor's flat parameter space
  (``actor_parameters``, the log std included for Gaussians), and the CG direction's in the Fisher metric on
  ``metric_states`` of the reference's states, ``s1^T F s2 / sqrt(s1^T F s1 s2^T F s2)`` ("policy change"): the
  cosine of the first-order changes of the policy's outputs the two directions make, the geometry TRPO's trust region
  measures, whatever the parameterization. Euclidean cosines in parameter space flatter: on CartPole (two actions)
  every gradient is a weighted sum of the per-state gradients of one logit difference, which point in similar
  directions at nearby states, so any two gradients have a large cosine (one from randomly shuffled advantages had
  cosine 0.45 to the true one).
- **Vine settings not in the vine's YAML** come from the checkpoint's TRPO entry (the policy must be the same):
  gamma, gae_lambda, gSDE (Pendulum), CG steps and damping; ``fisher_sample_fraction`` is VineTRPO's default 1.0
  (the rollout set is small; single path keeps its YAML value, 0.1 on Hopper).

Each (task, checkpoint, configuration) is one JSON under ``benchmarks/results/vine_study/{task}/{checkpoint}/``
(written as it finishes, skipped when present, so an interrupted run resumes), the reference's directions one small
``reference.npz`` beside its ``reference.json``. ``--report`` prints the tables (simulator steps needed to reach
cosine 0.5 / 0.8 / 0.9 on the mean curve, interpolated in log steps) and draws
``benchmarks/results/vine_study/{task}_{checkpoint}.png``; ``--readme`` writes the tables into README.md between
``<!-- vine-study:start -->`` and ``<!-- vine-study:end -->``. One torch thread, DummyVecEnv throughout.

    OMP_NUM_THREADS=1 python benchmarks/vine_study.py --tasks CartPole-v1 Pendulum-v1
    python benchmarks/vine_study.py --quick            # tiny sizes, results under benchmarks/results/vine_study_quick
    python benchmarks/vine_study.py --report           # or --readme
"""

import argparse
import datetime
import itertools
import json
import math
import os
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
import yaml
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import obs_as_tensor, set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecNormalize
from threadpoolctl import threadpool_limits

from sb3_trpo_ext import TRPO, VineTRPO
from sb3_trpo_ext.common.base import NaturalGradientAlgorithm
from sb3_trpo_ext.common.direction import natural_direction
from sb3_trpo_ext.common.distributions import actor_parameters
from sb3_trpo_ext.common.fisher import make_fisher_vector_product
from sb3_trpo_ext.common.natural_gradient import conjugate_gradient, flat_grad
from sb3_trpo_ext.common.policy_batch import AdvantageBatch, PolicyBatch, index_observations
from sb3_trpo_ext.common.rollouts import collect_rollouts_fast
from sb3_trpo_ext.vine.estimators import VineBatch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from results_io import git_commit, machine, replace_readme_section, write_json_atomic  # noqa: E402  (not a package)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "vine_study")
QUICK_RESULTS = os.path.join(ROOT, "benchmarks", "results", "vine_study_quick")
README = os.path.join(ROOT, "README.md")
MARKERS = ("<!-- vine-study:start -->", "<!-- vine-study:end -->")
THRESHOLDS = (0.5, 0.8, 0.9)
REFERENCE_TARGET = 0.95
"""Half-vs-half gradient cosine at which the reference stops growing."""
MIN_PAIRWISE = 0.25
"""Below this mean pairwise cosine of the repeats the bias check (:func:`implied_cosine`) is too noisy to report."""
"""Half-vs-half gradient cosine at which the reference stops growing."""
TRAINING_SEED = 0
REFERENCE_SEED = 10_000
SINGLE_PATH_SEED = 20_000
VINE_SEED = 30_000
YAML_ONLY_KEYS = ("n_timesteps", "policy", "normalize", "n_envs", "env_wrapper", "frame_stack")
"""Keys of an rl-zoo3 entry that are not constructor keywords."""
VINE_KEYS = (
    "n_steps",
    "n_rollout_states",
    "n_actions_per_state",
    "rollout_length",
    "action_sampling",
    "bootstrap_branches",
    "common_random_numbers",
)
"""Vine keywords taken from ``hyperparams/vine_trpo.yml`` (everything else comes from the checkpoint's TRPO entry)."""
VINE_DEFAULTS: dict[str, Any] = dict(
    n_steps=1024,
    n_rollout_states=64,
    n_actions_per_state=4,
    rollout_length=50,
    action_sampling="policy",
    bootstrap_branches=True,
    common_random_numbers=True,
)


# ---------------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class TaskPlan:
    """
    The sizes of the study on one task.

    :param checkpoint_steps: training steps of each checkpoint
    :param reference_envs: envs per reference chunk
    :param reference_steps: steps per env per reference chunk
    :param reference_chunks: the least and the most chunks of the reference (even numbers)
    :param fisher_states: the most states of the reference's Fisher
    :param metric_states: states of the Fisher metric of the policy-change cosine (:class:`FisherMetric`)
    :param batch_sizes: single-path batch sizes (simulator steps)
    :param vine_baseline: vine keywords of the baseline (``None``: the task's ``vine_trpo.yml`` entry)
    :param n_sweep: N of the vine's sweep at the baseline
    :param variants: one-at-a-time changes of the baseline, ``(name, keywords)``
    :param repeats: independent repeats of each estimator configuration
    """

    checkpoint_steps: dict[str, int]
    reference_envs: int
    reference_steps: int
    reference_chunks: tuple[int, int]
    fisher_states: int
    metric_states: int
    batch_sizes: tuple[int, ...]
    vine_baseline: dict[str, Any] | None
    n_sweep: tuple[int, ...]
    variants: tuple[tuple[str, dict[str, Any]], ...]
    repeats: int


def _common_variants(k_values: Sequence[int], m_values: Sequence[int]) -> tuple[tuple[str, dict[str, Any]], ...]:
    variants: list[tuple[str, dict[str, Any]]] = [(f"K{k}", {"n_actions_per_state": k}) for k in k_values]
    variants += [(f"m{m}", {"rollout_length": m}) for m in m_values]
    variants += [("no_bootstrap", {"bootstrap_branches": False}), ("no_crn", {"common_random_numbers": False})]
    return tuple(variants)


SINGLE_PATH_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
PLANS: dict[str, TaskPlan] = {
    "CartPole-v1": TaskPlan(
        checkpoint_steps={"early": 3_000, "mid": 10_000},
        reference_envs=16,
        reference_steps=8192,
        reference_chunks=(2, 8),
        fisher_states=65_536,
        metric_states=4096,
        batch_sizes=SINGLE_PATH_SIZES,
        vine_baseline=None,
        n_sweep=(16, 32, 64, 128, 256, 512),
        variants=_common_variants((), (10, 25, 100, 200)),
        repeats=8,
    ),
    "Pendulum-v1": TaskPlan(
        checkpoint_steps={"early": 20_000, "mid": 40_000},
        reference_envs=16,
        reference_steps=8192,
        reference_chunks=(2, 8),
        fisher_states=65_536,
        metric_states=4096,
        batch_sizes=SINGLE_PATH_SIZES,
        vine_baseline=None,
        n_sweep=(16, 32, 64, 128, 256, 512),
        variants=_common_variants((2, 8), (10, 25, 100)),
        repeats=8,
    ),
    # the sampling distribution q matters only when K < n (K >= n rolls out every action, Eq. 15): Acrobot's 3 actions
    "Acrobot-v1": TaskPlan(
        checkpoint_steps={"early": 10_000, "mid": 40_000},
        reference_envs=16,
        reference_steps=8192,
        reference_chunks=(2, 4),
        fisher_states=65_536,
        metric_states=4096,
        batch_sizes=SINGLE_PATH_SIZES[:-2],
        vine_baseline=None,
        n_sweep=(16, 64, 256),
        variants=(
            ("K2_uniform", {"n_actions_per_state": 2, "action_sampling": "uniform"}),
            ("K2_policy", {"n_actions_per_state": 2, "action_sampling": "policy"}),
            ("no_crn", {"common_random_numbers": False}),
        ),
        repeats=5,
    ),
    "Hopper-v5": TaskPlan(
        checkpoint_steps={"early": 50_000, "mid": 200_000},
        reference_envs=8,
        reference_steps=8192,
        reference_chunks=(2, 6),
        fisher_states=65_536,
        metric_states=4096,
        batch_sizes=SINGLE_PATH_SIZES[:-1],
        vine_baseline=dict(VINE_DEFAULTS),
        n_sweep=(16, 32, 64, 128, 256),
        variants=_common_variants((2, 8), (20, 100)),
        repeats=5,
    ),
}


def quick_plan(plan: TaskPlan) -> TaskPlan:
    """:param plan: a task's plan
    :return: the same study at tiny sizes (for the test and for debugging)"""
    return replace(
        plan,
        checkpoint_steps={name: max(1, steps // 20) for name, steps in plan.checkpoint_steps.items()},
        reference_envs=4,
        reference_steps=1024,
        reference_chunks=(2, 2),
        fisher_states=2048,
        metric_states=512,
        batch_sizes=(256, 1024),
        n_sweep=(8, 16),
        variants=plan.variants[-2:],
        repeats=2,
    )


# ---------------------------------------------------------------------------------------------------- settings


def yaml_entry(file_name: str, task: str) -> dict[str, Any]:
    """
    :param file_name: a file of ``hyperparams/``
    :param task: the env id
    :return: its entry for ``task`` (else its ``default`` entry)
    """
    with open(os.path.join(ROOT, "hyperparams", file_name)) as f:
        config = yaml.safe_load(f)
    return dict(config.get(task, config.get("default", {})))


def constructor_keywords(entry: dict[str, Any]) -> dict[str, Any]:
    """
    :param entry: an rl-zoo3 entry
    :return: the algorithm's keywords in it (``policy_kwargs`` strings evaluated as rl-zoo3 does)
    """
    keywords = {key: value for key, value in entry.items() if key not in YAML_ONLY_KEYS}
    if isinstance(keywords.get("policy_kwargs"), str):
        keywords["policy_kwargs"] = eval(keywords["policy_kwargs"], {"dict": dict, "nn": th.nn})  # noqa: S307 (our YAML)
    return keywords


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
    def untrained(cls, task: str, seed: int = 0) -> "Checkpoint":
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
    def load(cls, task: str, name: str, directory: str) -> "Checkpoint":
        """
        :param task: the env id
        :param name: the checkpoint's name
        :param directory: where :func:`train_checkpoints` saved it
        :return: the checkpoint
        """
        entry = yaml_entry("trpo_ext.yml", task)
        state_dict = th.load(os.path.join(directory, "policy.pt"), map_location="cpu", weights_only=True)
        stats = os.path.join(directory, "vec_normalize.pkl")
        with open(os.path.join(directory, "info.json")) as f:
            info = json.load(f)
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


def vine_baseline(task: str, plan: TaskPlan) -> dict[str, Any]:
    """:param task: the env id
    :param plan: the task's plan
    :return: the vine keywords of the task's baseline"""
    if plan.vine_baseline is not None:
        return dict(plan.vine_baseline)
    entry = yaml_entry("vine_trpo.yml", task)
    if int(entry.get("n_envs", 1)) != 1:
        raise ValueError(f"the study runs the vine's trunk on one env; {task}'s vine entry has n_envs {entry['n_envs']}")
    return {key: entry.get(key, VINE_DEFAULTS[key]) for key in VINE_KEYS}


# ---------------------------------------------------------------------------------------------------- checkpoints


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
        folder = os.path.join(directory, task, name)
        os.makedirs(folder, exist_ok=True)
        th.save(model.policy.state_dict(), os.path.join(folder, "policy.pt"))
        eval_env: VecEnv = make_vec_env(task, n_envs=1, seed=TRAINING_SEED + 1000)
        if isinstance(env, VecNormalize):
            env.save(os.path.join(folder, "vec_normalize.pkl"))
            eval_env = VecNormalize(eval_env, training=False, norm_reward=False)
            eval_env.obs_rms = env.obs_rms.copy()
        mean, std = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
        info = {
            "task": task,
            "checkpoint": name,
            "training_steps": int(model.num_timesteps),
            "planned_steps": steps,
            "seed": TRAINING_SEED,
            "hyperparams": "hyperparams/trpo_ext.yml",
            "eval_return_mean": float(mean),
            "eval_return_std": float(std),
            "eval_episodes": 10,
            "training_wall_s": time.perf_counter() - start,
            **provenance(),
        }
        write_json_atomic(os.path.join(folder, "info.json"), info)
        print(f"{task} {name}: {model.num_timesteps} steps, eval return {mean:.1f} +- {std:.1f}", flush=True)


# ---------------------------------------------------------------------------------------------------- sampling


class _Quiet(BaseCallback):
    def _on_step(self) -> bool:
        return True


def start_stream(model: NaturalGradientAlgorithm, seed: int, limit: int) -> BaseCallback:
    """
    Reset ``model``'s env and run the policy for a random burn-in of ``L`` to ``2L`` steps (``L``: the time limit),
    not counted: afterwards ``model.num_timesteps`` is 0 and the envs are somewhere in their episodes.

    :param model: a model whose env is freshly seeded
    :param seed: the seed of the burn-in length and of torch's and NumPy's generators
    :param limit: ``L``
    :return: the callback to collect with
    """
    set_random_seed(seed)
    model.set_logger(Logger(folder=None, output_formats=[]))
    model._setup_learn(total_timesteps=1, callback=None, reset_num_timesteps=True)
    callback = _Quiet()
    callback.init_callback(model)
    assert model.env is not None
    burn_in = limit + int(np.random.default_rng(seed).integers(limit))
    scratch = RolloutBuffer(burn_in, model.observation_space, model.action_space, model.device, n_envs=model.n_envs)
    collect_rollouts_fast(model, model.env, callback, scratch, burn_in)
    model.num_timesteps = 0
    return callback


@dataclass
class Samples:
    """
    Single-path samples as ``TRPO.train`` sees them.

    :param observations: the states
    :param actions: the actions (as the distributions' ``log_prob`` takes them)
    :param advantages: GAE advantages (not normalized)
    :param mc_advantages: Monte Carlo advantages (GAE with lambda = 1; None when not asked for)
    """

    observations: th.Tensor
    actions: th.Tensor
    advantages: th.Tensor
    mc_advantages: th.Tensor | None = None

    @staticmethod
    def concatenate(parts: Sequence["Samples"]) -> "Samples":
        """:param parts: samples
        :return: them as one"""
        mc = [part.mc_advantages for part in parts]
        return Samples(
            th.cat([part.observations for part in parts]),
            th.cat([part.actions for part in parts]),
            th.cat([part.advantages for part in parts]),
            None if any(m is None for m in mc) else th.cat(mc),  # type: ignore[arg-type]
        )

    def batch(self, model: NaturalGradientAlgorithm, monte_carlo: bool = False) -> AdvantageBatch:
        """:param model: the model whose ``train()`` settings apply (normalization, sub-sampling)
        :param monte_carlo: use the Monte Carlo advantages
        :return: the batch ``TRPO.train`` would take its step on"""
        advantages = self.mc_advantages if monte_carlo else self.advantages
        assert advantages is not None
        return AdvantageBatch.from_rollout(
            self.observations, self.actions, advantages, model.sub_sampling_factor, model.normalize_advantage
        )


def collect_single_path(checkpoint: Checkpoint, n_envs: int, n_steps: int, seed: int, monte_carlo: bool = False) -> Samples:
    """
    One single-path batch of ``n_envs x n_steps`` steps, after a burn-in.

    :param checkpoint: the policy
    :param n_envs: number of envs
    :param n_steps: steps per env
    :param seed: seed of the envs and of the sampling
    :param monte_carlo: also compute the Monte Carlo advantages
    :return: the samples
    """
    env = checkpoint.make_env(n_envs, seed)
    model = checkpoint.trpo(env, seed)
    callback = start_stream(model, seed, time_limit(checkpoint.task))
    buffer = RolloutBuffer(
        n_steps, model.observation_space, model.action_space, model.device, model.gae_lambda, model.gamma, n_envs
    )
    model.collect_rollouts(env, callback, buffer, n_steps)
    assert model.num_timesteps == n_envs * n_steps
    if monte_carlo:
        # GAE with lambda = 1 on the same samples; the batch below is shuffled by the buffer's get(), so the Monte
        # Carlo advantages ride along in the `returns` field (unused here: no critic is fitted)
        gae = buffer.advantages.copy()
        with th.no_grad():
            last_values = model.policy.predict_values(obs_as_tensor(model._last_obs, model.device))  # type: ignore[arg-type]
        buffer.gae_lambda = 1.0
        buffer.compute_returns_and_advantage(last_values, model._last_episode_starts)  # type: ignore[arg-type]
        buffer.returns, buffer.advantages = buffer.advantages.copy(), gae
    model.rollout_buffer = buffer
    data = model._rollout_samples()
    env.close()
    mc_advantages = data.returns.flatten() if monte_carlo else None
    return Samples(data.observations, data.actions, data.advantages, mc_advantages)


@dataclass
class Directions:
    """
    What one estimate gives: the surrogate's gradient and the natural-gradient direction (CG solution).

    :param gradient: the gradient of the surrogate with respect to the actor's parameters
    :param natural: the conjugate-gradient solution of ``(F + damping I) s = gradient``
    :param sim_steps: simulator steps spent
    :param detail: anything else to report (trunk and branch steps)
    """

    gradient: th.Tensor
    natural: th.Tensor
    sim_steps: int
    detail: dict[str, Any] = field(default_factory=dict)


def estimate_directions(model: NaturalGradientAlgorithm, batch: PolicyBatch, cg_max_steps: int) -> tuple[th.Tensor, th.Tensor]:
    """
    The gradient and CG direction of ``batch``'s surrogate at the current parameters, as the model's update computes
    them (:func:`~sb3_trpo_ext.common.direction.natural_direction` with the model's Fisher path, damping and
    ``fisher_sample_fraction``).

    :param model: the model (its policy and Fisher settings)
    :param batch: the samples
    :param cg_max_steps: conjugate-gradient iterations
    :return: the gradient and the CG solution
    """
    found = natural_direction(
        model.policy, batch, model.backends.fisher, model.fisher_damping, cg_max_steps, model.fisher_sample_fraction
    )
    assert found.direction is not None, found.failure
    return found.gradient.detach().double(), found.direction.detach().double()


def single_path_estimate(checkpoint: Checkpoint, batch_size: int, seed: int, cg_max_steps: int) -> Directions:
    """
    :param checkpoint: the policy
    :param batch_size: simulator steps (split over the YAML's ``n_envs``)
    :param seed: the seed
    :param cg_max_steps: conjugate-gradient iterations
    :return: the single-path estimate
    """
    n_envs = checkpoint.n_envs
    samples = collect_single_path(checkpoint, n_envs, batch_size // n_envs, seed)
    model = checkpoint.trpo(checkpoint.make_env(1, seed), seed)
    set_random_seed(seed)  # the Fisher's subsample
    gradient, natural = estimate_directions(model, samples.batch(model), cg_max_steps)
    return Directions(gradient, natural, n_envs * (batch_size // n_envs))


def vine_batch(checkpoint: Checkpoint, vine_keywords: dict[str, Any], seed: int) -> tuple[VineTRPO, VineBatch]:
    """
    One vine iteration's samples: ``VineTRPO.collect_rollouts`` (trunk, rollout set, branches) after a burn-in.

    :param checkpoint: the policy
    :param vine_keywords: the vine's keywords
    :param seed: the seed (envs, trunk noise, rollout set, branch noise)
    :return: the model (``num_timesteps``: trunk plus branch steps) and its ``vine_batch``
    """
    env = checkpoint.make_env(1, seed)
    model = checkpoint.vine(env, seed, vine_keywords)
    callback = start_stream(model, seed, time_limit(checkpoint.task))
    model.collect_rollouts(env, callback, model.rollout_buffer, model.n_steps)
    env.close()
    return model, model.vine_batch


def vine_estimate(checkpoint: Checkpoint, vine_keywords: dict[str, Any], seed: int, cg_max_steps: int) -> Directions:
    """
    One vine iteration's estimate: the gradient and CG direction of ``vine_batch.surrogate``.

    :param checkpoint: the policy
    :param vine_keywords: the vine's keywords
    :param seed: the seed (envs, trunk noise, rollout set, branch noise)
    :param cg_max_steps: conjugate-gradient iterations
    :return: the vine estimate, its cost being trunk plus branch steps
    """
    model, batch = vine_batch(checkpoint, vine_keywords, seed)
    trunk_steps = model.n_steps * model.n_envs
    set_random_seed(seed)
    gradient, natural = estimate_directions(model, batch, cg_max_steps)
    detail = {"trunk_steps": trunk_steps, "branch_steps": model.num_timesteps - trunk_steps}
    return Directions(gradient, natural, model.num_timesteps, detail)


def vine_keywords_for(baseline: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """
    :param baseline: the baseline's vine keywords
    :param change: keywords to change; a new ``n_rollout_states`` scales the trunk along (same states per trunk step)
    :return: the configuration's vine keywords
    """
    keywords = {**baseline, **change}
    if "n_rollout_states" in change and "n_steps" not in change:
        ratio = baseline["n_steps"] / baseline["n_rollout_states"]
        keywords["n_steps"] = max(int(baseline["n_steps"]), int(math.ceil(ratio * keywords["n_rollout_states"])))
    return keywords


# ---------------------------------------------------------------------------------------------------- the reference


def cosine(a: th.Tensor, b: th.Tensor) -> float:
    """:return: the cosine similarity of two vectors (0 when one is zero)"""
    a, b = a.double(), b.double()
    norm = float(a.norm() * b.norm())
    return float(a @ b) / norm if norm > 0 else 0.0


class FisherMetric:
    """
    The reference's analytic Fisher (undamped) on a fixed sample of its states, as an inner product: the cosine of
    two natural-gradient directions in it is the cosine of the first-order changes of the policy's output they make
    (in the KL geometry TRPO's trust region measures).

    :param checkpoint: the policy
    :param observations: the states
    """

    def __init__(self, checkpoint: Checkpoint, observations: th.Tensor) -> None:
        model = checkpoint.trpo(checkpoint.make_env(1, REFERENCE_SEED), REFERENCE_SEED)
        params = actor_parameters(model.policy, model.policy.get_distribution(observations[:2]))
        self.product = make_fisher_vector_product(model.backends.fisher, model.policy, observations, params)

    def cosine(self, a: th.Tensor, b: th.Tensor) -> float:
        """:return: ``a^T F b / sqrt(a^T F a * b^T F b)`` (0 when one of them is zero)"""
        fa, fb = self.product(a.float()).double(), self.product(b.float()).double()
        norm = float(a.double() @ fa) * float(b.double() @ fb)
        return float(a.double() @ fb) / math.sqrt(norm) if norm > 0 else 0.0

    def norm(self, a: th.Tensor) -> float:
        """:return: ``sqrt(a^T F a)``"""
        return math.sqrt(max(0.0, float(a.double() @ self.product(a.float()).double())))


def euclidean_norm(a: th.Tensor) -> float:
    """:return: the Euclidean norm"""
    return float(a.double().norm())


def large_batch_gradient(model: NaturalGradientAlgorithm, batch: AdvantageBatch, chunk: int = 32_768) -> th.Tensor:
    """
    The gradient of ``batch.surrogate`` (a mean over samples) in chunks, so that a batch of any size fits in memory.

    :param model: the model (its policy)
    :param batch: the samples, advantages already normalized over the whole batch
    :param chunk: samples per backward pass
    :return: the gradient with respect to the actor's parameters
    """
    policy = model.policy
    n = len(batch.actions)
    total: th.Tensor | None = None
    for first in range(0, n, chunk):
        part = slice(first, min(n, first + chunk))
        distribution = policy.get_distribution(index_observations(batch.observations, part))
        log_prob = distribution.log_prob(batch.actions[part])
        params = actor_parameters(policy, distribution)
        piece = AdvantageBatch(batch.observations[part], batch.actions[part], batch.advantages[part])
        grad = flat_grad(piece.surrogate(log_prob, log_prob.detach()), params).double() * (len(piece.actions) / n)
        total = grad if total is None else total + grad
    assert total is not None
    return total


def large_batch_natural(
    model: NaturalGradientAlgorithm, samples: Samples, gradient: th.Tensor, fisher_states: int, seed: int
) -> th.Tensor:
    """
    :param model: the model (policy, Fisher path, ``cg_max_steps``, ``cg_damping``)
    :param samples: the batch
    :param gradient: its gradient
    :param fisher_states: the most states of the Fisher (drawn at random without replacement)
    :param seed: the seed of that draw
    :return: the CG solution of ``(F + damping I) s = gradient``
    """
    n = len(samples.actions)
    index = th.from_numpy(np.random.default_rng(seed).permutation(n)[: min(n, fisher_states)])
    observations = index_observations(samples.observations, index)
    params = actor_parameters(model.policy, model.policy.get_distribution(observations[:2]))
    fisher = make_fisher_vector_product(model.backends.fisher, model.policy, observations, params)
    damping = model.fisher_damping
    return conjugate_gradient(lambda v: fisher(v) + damping * v, gradient.float(), model.cg_max_steps).solution.double()


def reference_directions(
    checkpoint: Checkpoint, plan: TaskPlan, log: Any = print
) -> tuple[dict[str, th.Tensor], dict[str, Any]]:
    """
    The reference directions of a checkpoint: chunks of ``reference_envs x reference_steps`` steps, each with its own
    seeds, until two halves agree (gradient cosine >= ``REFERENCE_TARGET``) or ``reference_chunks[1]`` chunks.

    :param checkpoint: the policy
    :param plan: the task's plan
    :param log: where progress goes
    :return: the directions (``gradient``, ``natural``, ``mc_gradient``), the states of the Fisher metric
        (``metric_observations``, see :class:`FisherMetric`) and their description
    """
    start = time.perf_counter()
    model = checkpoint.trpo(checkpoint.make_env(1, REFERENCE_SEED), REFERENCE_SEED)
    low, high = plan.reference_chunks
    chunks: list[Samples] = []
    halves: dict[str, float] = {}
    while True:
        seed = REFERENCE_SEED + 1000 * len(chunks)
        chunks.append(collect_single_path(checkpoint, plan.reference_envs, plan.reference_steps, seed, monte_carlo=True))
        if len(chunks) < low or len(chunks) % 2:
            continue
        parts = [Samples.concatenate(chunks[0::2]), Samples.concatenate(chunks[1::2])]
        gradients = [large_batch_gradient(model, part.batch(model)) for part in parts]
        halves["gradient"] = cosine(*gradients)
        log(f"  reference: {len(chunks)} chunks, {sum(len(c.actions) for c in chunks)} steps, halves {halves['gradient']:.3f}")
        if halves["gradient"] >= REFERENCE_TARGET or len(chunks) >= high:
            break
    naturals = [
        large_batch_natural(model, part, g, plan.fisher_states // 2, REFERENCE_SEED + i)
        for i, (part, g) in enumerate(zip(parts, gradients, strict=True))
    ]
    halves["natural"] = cosine(*naturals)
    mc_gradients = [large_batch_gradient(model, part.batch(model, monte_carlo=True)) for part in parts]
    halves["mc_gradient"] = cosine(*mc_gradients)
    everything = Samples.concatenate(chunks)
    n = len(everything.actions)
    metric_index = th.from_numpy(np.random.default_rng(REFERENCE_SEED + 7).permutation(n)[: min(n, plan.metric_states)])
    metric_observations = index_observations(everything.observations, metric_index).float()
    metric = FisherMetric(checkpoint, metric_observations)
    halves["policy"] = metric.cosine(*naturals)
    gradient = large_batch_gradient(model, everything.batch(model))
    natural = large_batch_natural(model, everything, gradient, plan.fisher_states, REFERENCE_SEED)
    mc_gradient = large_batch_gradient(model, everything.batch(model, monte_carlo=True))
    quality = {key: implied_quality(value) for key, value in halves.items()}
    info = {
        "samples": len(everything.actions),
        "chunks": len(chunks),
        "envs_per_chunk": plan.reference_envs,
        "steps_per_env": plan.reference_steps,
        "fisher_states": min(len(everything.actions), plan.fisher_states),
        "metric_states": len(metric_index),
        "cg_max_steps": model.cg_max_steps,
        "cg_damping": model.cg_damping,
        "gamma": model.gamma,
        "gae_lambda": model.gae_lambda,
        "half_cosine": halves,
        "quality": quality,
        "gae_vs_mc_cosine": cosine(gradient, mc_gradient),
        "gae_vs_mc_cosine_corrected": cosine(gradient, mc_gradient) / (quality["gradient"] * quality["mc_gradient"])
        if quality["gradient"] * quality["mc_gradient"] > 0
        else None,
        "n_parameters": int(gradient.numel()),
        "wall_s": time.perf_counter() - start,
    }
    directions = {"gradient": gradient, "natural": natural, "mc_gradient": mc_gradient}
    return {**directions, "metric_observations": metric_observations}, info


def implied_quality(half_cosine: float) -> float:
    """
    :param half_cosine: cosine ``h`` between two independent halves of a batch
    :return: the full batch's cosine to its noise-free direction, ``sqrt(2h / (1 + h))`` (0 for ``h <= 0``)
    """
    return math.sqrt(2 * half_cosine / (1 + half_cosine)) if half_cosine > 0 else 0.0


# ---------------------------------------------------------------------------------------------------- one configuration


@dataclass(frozen=True)
class Config:
    """
    One estimator configuration.

    :param name: file name (without ``.json``)
    :param family: ``single_path``, ``vine`` (the N sweep at the baseline) or ``vine_variant``
    :param params: ``batch_size`` for single path, the vine's keywords otherwise
    :param change: what differs from the vine's baseline
    """

    name: str
    family: str
    params: dict[str, Any]
    change: dict[str, Any] = field(default_factory=dict)


def configs(task: str, plan: TaskPlan) -> list[Config]:
    """:param task: the env id
    :param plan: the task's plan
    :return: the estimator configurations of the task, cheapest families first"""
    found = [Config(f"single_path-B{size}", "single_path", {"batch_size": size}) for size in plan.batch_sizes]
    baseline = vine_baseline(task, plan)
    for n in plan.n_sweep:
        change = {"n_rollout_states": n}
        found.append(Config(f"vine-N{n}", "vine", vine_keywords_for(baseline, change), change))
    for name, change in plan.variants:
        found.append(Config(f"vine-{name}", "vine_variant", vine_keywords_for(baseline, change), change))
    return found


def run_config(
    checkpoint: Checkpoint, config: Config, reference: dict[str, th.Tensor], repeats: int, cg_max_steps: int
) -> dict[str, Any]:
    """
    :param checkpoint: the policy
    :param config: the estimator
    :param reference: the reference directions
    :param repeats: independent repeats
    :param cg_max_steps: conjugate-gradient iterations (the reference's)
    :return: the configuration's result (cosines per repeat and summaries)
    """
    start = time.perf_counter()
    estimates: list[Directions] = []
    for repeat in range(repeats):
        if config.family == "single_path":
            estimates.append(
                single_path_estimate(checkpoint, config.params["batch_size"], SINGLE_PATH_SEED + repeat, cg_max_steps)
            )
        else:
            estimates.append(vine_estimate(checkpoint, config.params, VINE_SEED + repeat, cg_max_steps))
    result: dict[str, Any] = {
        "task": checkpoint.task,
        "checkpoint": checkpoint.name,
        "config": config.name,
        "family": config.family,
        "params": config.params,
        "change": config.change,
        "repeats": repeats,
        "seeds": [(SINGLE_PATH_SEED if config.family == "single_path" else VINE_SEED) + r for r in range(repeats)],
        "sim_steps": [e.sim_steps for e in estimates],
        "cg_max_steps": cg_max_steps,
    }
    for key in ("trunk_steps", "branch_steps"):
        if estimates[0].detail.get(key) is not None:
            result[key] = [e.detail[key] for e in estimates]
    metric = FisherMetric(checkpoint, reference["metric_observations"])
    gradients, naturals = [e.gradient for e in estimates], [e.natural for e in estimates]
    for kind, vectors, target, similarity, norm in (
        ("gradient", gradients, reference["gradient"], cosine, euclidean_norm),
        ("natural", naturals, reference["natural"], cosine, euclidean_norm),
        ("mc_gradient", gradients, reference["mc_gradient"], cosine, euclidean_norm),
        ("policy", naturals, reference["natural"], metric.cosine, metric.norm),
    ):
        result[f"cos_{kind}"] = [similarity(v, target) for v in vectors]
        units = [v / norm(v) if norm(v) > 0 else v for v in vectors]
        pairs = [similarity(a, b) for a, b in itertools.combinations(units, 2)]
        result[f"pairwise_{kind}"] = float(np.mean(pairs)) if pairs else None
        result[f"mean_direction_cos_{kind}"] = similarity(th.stack(units).mean(dim=0), target)
    result["wall_s"] = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------------- files


def provenance() -> dict[str, Any]:
    """:return: date, machine class, git commit and the command line"""

    found = git_commit(("sb3_trpo_ext",))
    commit: dict[str, Any] = {"commit": found["commit"], "package_dirty": found["dirty"]}
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "machine": machine(),
        "git": commit,
        "command": "python benchmarks/vine_study.py " + " ".join(sys.argv[1:]),
        "torch_threads": th.get_num_threads(),
    }


def load_reference(folder: str) -> tuple[dict[str, th.Tensor], dict[str, Any]] | None:
    """:param folder: a checkpoint's results folder
    :return: its saved reference, or None"""
    path = os.path.join(folder, "reference.npz")
    if not (os.path.exists(path) and os.path.exists(os.path.join(folder, "reference.json"))):
        return None
    with np.load(path) as saved:
        directions = {key: th.from_numpy(saved[key]) for key in saved.files}
    with open(os.path.join(folder, "reference.json")) as f:
        return directions, json.load(f)


def run_study(
    tasks: Sequence[str],
    checkpoint_names: Sequence[str],
    results: str,
    quick: bool = False,
    repeats: int | None = None,
    only: Sequence[str] = (),
) -> None:
    """
    Run whatever is missing: checkpoints, references, then each configuration (one JSON each).

    :param tasks: env ids
    :param checkpoint_names: ``early``, ``mid``
    :param results: the results folder
    :param quick: tiny sizes
    :param repeats: override the plans' repeats
    :param only: run only configurations whose names start with one of these
    """
    for task in tasks:
        plan = quick_plan(PLANS[task]) if quick else PLANS[task]
        checkpoints_dir = os.path.join(results, "checkpoints")
        train_checkpoints(task, plan, checkpoints_dir, checkpoint_names)
        for name in checkpoint_names:
            checkpoint = Checkpoint.load(task, name, os.path.join(checkpoints_dir, task, name))
            folder = os.path.join(results, task, name)
            loaded = load_reference(folder)
            if loaded is None:
                print(f"{task} {name}: reference", flush=True)
                directions, info = reference_directions(checkpoint, plan)
                info.update(task=task, checkpoint=name, checkpoint_info=checkpoint.info, **provenance())
                os.makedirs(folder, exist_ok=True)
                np.savez(os.path.join(folder, "reference.npz"), **{k: v.float().numpy() for k, v in directions.items()})
                write_json_atomic(os.path.join(folder, "reference.json"), info)
            else:
                directions, info = loaded
            print(f"{task} {name}: reference of {info['samples']} steps, halves {info['half_cosine']}", flush=True)
            for config in configs(task, plan):
                path = os.path.join(folder, f"{config.name}.json")
                if os.path.exists(path) or (only and not any(config.name.startswith(prefix) for prefix in only)):
                    continue
                result = run_config(checkpoint, config, directions, repeats or plan.repeats, int(info["cg_max_steps"]))
                result.update(provenance())
                write_json_atomic(path, result)
                print(
                    f"{task} {name} {config.name}: {np.mean(result['sim_steps']):.0f} steps, cos "
                    f"{np.mean(result['cos_gradient']):.3f} +- {np.std(result['cos_gradient']):.3f}, natural "
                    f"{np.mean(result['cos_natural']):.3f}, {result['wall_s']:.1f} s",
                    flush=True,
                )


# ---------------------------------------------------------------------------------------------------- report


def load_results(results: str) -> dict[tuple[str, str], dict[str, Any]]:
    """:param results: the results folder
    :return: per (task, checkpoint): ``reference`` (its JSON) and ``configs`` (name -> JSON)"""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    present = os.listdir(results) if os.path.isdir(results) else []
    for task in sorted(present, key=lambda name: (list(PLANS).index(name) if name in PLANS else len(PLANS), name)):
        if task == "checkpoints" or not os.path.isdir(os.path.join(results, task)):
            continue
        for name in sorted(os.listdir(os.path.join(results, task))):
            folder = os.path.join(results, task, name)
            if not os.path.exists(os.path.join(folder, "reference.json")):
                continue
            with open(os.path.join(folder, "reference.json")) as f:
                reference = json.load(f)
            runs = {}
            for file_name in sorted(os.listdir(folder)):
                if file_name.endswith(".json") and file_name != "reference.json":
                    with open(os.path.join(folder, file_name)) as f:
                        run = json.load(f)
                    runs[run["config"]] = run
            found[(task, name)] = {"reference": reference, "configs": runs}
    return found


def curve(runs: Sequence[dict[str, Any]], kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:param runs: configurations of one family
    :param kind: ``gradient``, ``natural`` or ``mc_gradient``
    :return: mean simulator steps, mean and std of the cosine, sorted by steps"""
    rows = sorted(
        (float(np.mean(r["sim_steps"])), float(np.mean(r[f"cos_{kind}"])), float(np.std(r[f"cos_{kind}"]))) for r in runs
    )
    steps, means, stds = (np.array(column) for column in zip(*rows, strict=True)) if rows else (np.zeros(0),) * 3
    return steps, means, stds


def steps_to_reach(steps: np.ndarray, means: np.ndarray, threshold: float) -> str:
    """
    :param steps: simulator steps, increasing
    :param means: the mean cosine at each
    :param threshold: the cosine to reach
    :return: the steps at which the mean curve first reaches ``threshold`` (linear in log steps between points),
        ``<= first`` when the first point is already there, ``not reached`` otherwise (the table's last column gives
        the best mean cosine)
    """
    for i, value in enumerate(means):
        if value >= threshold:
            if i == 0:
                return f"<= {steps[0]:,.0f}"
            before, after = means[i - 1], value
            fraction = (threshold - before) / (after - before)
            return f"{math.exp(math.log(steps[i - 1]) + fraction * (math.log(steps[i]) - math.log(steps[i - 1]))):,.0f}"
    return "not reached" if len(means) else "-"


def implied_cosine(run: dict[str, Any], reference: dict[str, Any], kind: str) -> float | None:
    """:return: the cosine of the estimator's expectation to the reference's noise-free direction (bias check)"""
    pairwise = run.get(f"pairwise_{kind}")
    quality = reference["quality"][kind]
    if pairwise is None or pairwise < MIN_PAIRWISE or quality <= 0:
        return None
    return float(np.mean(run[f"cos_{kind}"])) / (math.sqrt(pairwise) * quality)


KIND_LABELS = {"gradient": "grad", "natural": "natural", "policy": "policy change"}
"""The cosines of the report: the gradient's, the CG direction's (Euclidean), the CG direction's in the Fisher metric."""
FAMILY_NAMES = {"single_path": "single path (batch size sweep)", "vine": "vine (N sweep at the baseline)"}


def describe_change(run: dict[str, Any]) -> str:
    """:return: a configuration's short description"""
    if run["family"] == "single_path":
        return f"single path, batch {run['params']['batch_size']:,}"
    p = run["params"]
    text = (
        f"N={p['n_rollout_states']} K={p['n_actions_per_state']} m={p['rollout_length']} trunk={p['n_steps']}"
        f"{'' if p['bootstrap_branches'] else ' no-bootstrap'}{'' if p['common_random_numbers'] else ' no-CRN'}"
        f" q={p['action_sampling']}"
    )
    return ("vine " if run["family"] == "vine" else "vine variant ") + text


def report(results: str, plot: bool = True, detail: bool = True) -> str:
    """
    :param results: the results folder
    :param plot: also draw the PNG plots
    :param detail: also the table of every configuration (else only the steps needed to reach each cosine)
    :return: the markdown report
    """
    found = load_results(results)
    if not found:
        return "No vine-study results yet."
    all_runs = [run for entry in found.values() for run in entry["configs"].values()]
    commands = sorted({run.get("command", "") for run in all_runs})
    dates = sorted({run.get("date", "") for run in all_runs})
    machines = sorted({run.get("machine", "") for run in all_runs})
    repeats: dict[str, set[int]] = {}
    for (task, _), entry in found.items():
        repeats.setdefault(task, set()).update(run["repeats"] for run in entry["configs"].values())
    lines = [
        "Cosine similarity of policy-gradient estimates to a large-batch reference (single-path surrogate, normalized "
        "GAE, the checkpoint's critic) per simulator step spent (vine: trunk plus branch steps), mean over repeats ("
        + ", ".join(f"{task}: {'/'.join(map(str, sorted(r)))}" for task, r in repeats.items())
        + "). The tables give the simulator steps at which each family's mean curve first reaches a cosine "
        '(interpolated in log steps). "grad": the surrogate\'s gradient; "natural": the CG direction (the reference\'s '
        'CG settings) against the reference\'s CG direction; "policy change": the same two directions in the Fisher '
        "metric (the cosine of the changes of the policy's output they make). Single path: batches of 512 to 64K "
        "steps (32K on Hopper, 16K on Acrobot); vine: N from 16 to 512 (256 on Hopper and Acrobot) at the baseline "
        "(CartPole, Pendulum and Acrobot: `hyperparams/vine_trpo.yml`, Hopper: N 64, K 4, m 50, bootstrapped), the "
        "trunk growing with N. Acrobot (3 actions) is where the sampling distribution q can matter: its variants "
        "draw K = 2 of the 3 actions uniformly or from the policy. Measured by "
        + ", ".join(f"`{c}`" for c in commands)
        + f" on {'; '.join(machines)} (one torch thread), {dates[0]}"
        + (f" to {dates[-1]}" if dates[-1] != dates[0] else "")
        + ". Files, plots (`{task}_{checkpoint}.png`) and the table of every configuration (`report.md`, with the "
        "one-at-a-time changes of K, m, bootstrapping and common random numbers): `benchmarks/results/vine_study/`.",
        "",
    ]
    lines += headline_table(found) + [""]
    for (task, name), entry in found.items():
        reference, runs = entry["reference"], entry["configs"]
        info = reference.get("checkpoint_info", {})
        half = reference["half_cosine"]
        corrected = reference.get("gae_vs_mc_cosine_corrected")
        lines += [
            f"#### {task}, {name} checkpoint ({info.get('training_steps', 0):,} TRPO steps, "
            f"evaluation return {info.get('eval_return_mean', float('nan')):.1f})",
            "",
            f"Reference: {reference['samples']:,} steps ({reference['chunks']} chunks of {reference['envs_per_chunk']} "
            f"envs x {reference['steps_per_env']:,}); half-vs-half cosine {half['gradient']:.3f} (gradient), "
            f"{half['natural']:.3f} (natural), {half['policy']:.3f} (policy change), {half['mc_gradient']:.3f} (Monte "
            f"Carlo gradient, lambda 1); GAE vs Monte Carlo reference {reference['gae_vs_mc_cosine']:.3f}"
            + (f" ({corrected:.2f} corrected for their noise)" if corrected is not None else "")
            + ".",
            "",
            "| estimator | "
            + " | ".join(f"{label} {threshold}" for label in KIND_LABELS.values() for threshold in THRESHOLDS)
            + " | best mean cosine: grad / natural / policy change (at steps) |",
            "|---" * (2 + len(KIND_LABELS) * len(THRESHOLDS)) + "|",
        ]
        for family, label in FAMILY_NAMES.items():
            members = [run for run in runs.values() if run["family"] == family]
            if not members:
                continue
            cells, best = [], []
            for kind in KIND_LABELS:
                steps, means, _ = curve(members, kind)
                cells += [steps_to_reach(steps, means, threshold) for threshold in THRESHOLDS]
                best.append(f"{means.max():.2f} ({steps[int(np.argmax(means))]:,.0f})")
            lines.append(f"| {label} | " + " | ".join(cells) + " | " + " / ".join(best) + " |")
        lines.append("")
        if detail:
            lines += configuration_table(runs, reference) + [""]
        if plot:
            draw(task, name, runs, reference, os.path.join(results, f"{task}_{name}.png"))
    if detail:
        lines.append(
            '"implied": mean cosine / (sqrt(mean pairwise cosine of the repeats) x the reference\'s own cosine to its '
            "noise-free direction, sqrt(2h/(1+h))), the cosine of the estimator's expectation to the reference if the "
            "noise is independent: about 1 when both estimate the same direction (not given when the repeats agree too "
            f"little, mean pairwise cosine below {MIN_PAIRWISE}, for the ratio to mean anything)."
        )
    return "\n".join(lines)


def headline_table(found: dict[tuple[str, str], dict[str, Any]], thresholds: Sequence[float] = (0.5, 0.8)) -> list[str]:
    """
    The headline: per task and checkpoint, the simulator steps each family needs to reach a gradient cosine, and how
    many times more the vine needs: ``>=`` a lower bound (the vine never reached it, so its largest N is used, or
    single path reached it with its smallest batch), ``<=`` an upper bound (the vine reached it with its smallest N).

    :param found: the loaded results
    :param thresholds: the gradient cosines
    :return: the markdown lines
    """
    header = ["task, checkpoint"]
    for threshold in thresholds:
        header += [f"single path to {threshold}", f"vine to {threshold}", "vine / single path"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for (task, name), entry in found.items():
        row = [f"{task}, {name}"]
        for threshold in thresholds:
            reached = {}
            for family in FAMILY_NAMES:
                members = [run for run in entry["configs"].values() if run["family"] == family]
                steps, means, _ = curve(members, "gradient")
                reached[family] = (steps_to_reach(steps, means, threshold), steps)
            single, vine = reached["single_path"][0], reached["vine"][0]
            row += [single, vine]
            single_steps = _plain_number(single)
            vine_steps = _plain_number(vine)
            # "<= s": reached by the smallest size s (an upper bound on the steps); "not reached": beyond the largest
            if vine == "not reached" and len(reached["vine"][1]):
                vine_steps, vine_bound = float(reached["vine"][1][-1]), "above"
            else:
                vine_bound = "below" if vine.startswith("<=") else "exact"
            single_bound = "below" if single.startswith("<=") else "exact"
            if single_steps is None or vine_steps is None or (vine_bound, single_bound) == ("below", "below"):
                row.append("-")
            else:
                ratio = vine_steps / single_steps
                exact = (vine_bound, single_bound) == ("exact", "exact")
                at_least = vine_bound == "above" or single_bound == "below"
                row.append(f"{ratio:.1f}x" if exact else (f">= {ratio:.1f}x" if at_least else f"<= {ratio:.1f}x"))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _plain_number(text: str) -> float | None:
    try:
        return float(text.replace("<=", "").replace(",", "").strip())
    except ValueError:
        return None


def configuration_table(runs: dict[str, dict[str, Any]], reference: dict[str, Any]) -> list[str]:
    """:param runs: the configurations of one task and checkpoint
    :param reference: their reference's description
    :return: the markdown table of every configuration (mean ± std over repeats)"""
    lines = [
        "| configuration | sim steps | grad | natural | policy change | grad vs Monte Carlo ref | implied grad | "
        "implied policy change |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {"single_path": 0, "vine": 1, "vine_variant": 2}
    for run in sorted(runs.values(), key=lambda r: (order[r["family"]], float(np.mean(r["sim_steps"])))):
        implied = [implied_cosine(run, reference, kind) for kind in ("gradient", "policy")]
        cells = [f"{np.mean(run[f'cos_{kind}']):.3f} ± {np.std(run[f'cos_{kind}']):.3f}" for kind in KIND_LABELS]
        cells += [f"{np.mean(run['cos_mc_gradient']):.3f}"] + ["-" if i is None else f"{i:.2f}" for i in implied]
        lines.append(f"| {describe_change(run)} | {np.mean(run['sim_steps']):,.0f} | " + " | ".join(cells) + " |")
    return lines


def draw(task: str, name: str, runs: dict[str, dict[str, Any]], reference: dict[str, Any], path: str) -> None:
    """Plot cosine vs simulator steps (log x), gradient and natural gradient, for one task and checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ("gradient", "natural gradient (CG direction)", "policy change (CG direction, Fisher metric)")
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5), sharey=True)
    for axis, kind, title in zip(axes, KIND_LABELS, titles, strict=True):
        for family, style in (("single_path", "o-"), ("vine", "s-")):
            members = [run for run in runs.values() if run["family"] == family]
            if members:
                steps, means, stds = curve(members, kind)
                axis.plot(steps, means, style, label=FAMILY_NAMES[family])
                axis.fill_between(steps, means - stds, means + stds, alpha=0.2)
        for run in runs.values():
            if run["family"] == "vine_variant":
                x, y = float(np.mean(run["sim_steps"])), float(np.mean(run[f"cos_{kind}"]))
                axis.errorbar(x, y, yerr=float(np.std(run[f"cos_{kind}"])), fmt="^", color="tab:red", alpha=0.7)
                axis.annotate(
                    run["config"].removeprefix("vine-"), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        axis.axhline(reference["half_cosine"][kind], color="grey", linestyle=":", label="reference half vs half")
        axis.set_xscale("log")
        axis.set_xlabel("simulator steps")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("cosine to the large-batch reference")
    axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle(f"{task}, {name} checkpoint: gradient quality per simulator step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_readme(text: str, readme: str = README) -> None:
    """Write ``text`` into ``readme`` between the vine-study markers."""
    paragraphs = [
        line if line.startswith(("|", "#")) else textwrap.fill(line, 120, break_long_words=False, break_on_hyphens=False)
        for line in text.replace("#### ", "##### ").split("\n")
    ]
    replace_readme_section("\n".join(paragraphs), "vine-study", readme)


# ---------------------------------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--checkpoints", nargs="+", default=["early", "mid"], choices=["early", "mid"])
    parser.add_argument("--repeats", type=int, default=None, help="repeats per configuration (default: the task's plan)")
    parser.add_argument("--only", nargs="+", default=[], help="run only configurations whose names start with these")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (results under vine_study_quick/)")
    parser.add_argument("--results", default=None, help="results folder (default: benchmarks/results/vine_study)")
    parser.add_argument("--report", action="store_true", help="print the tables, draw the plots, write report.md")
    parser.add_argument("--readme", action="store_true", help="--report, and the summary into README.md's markers")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = "1"
    th.set_num_threads(1)
    threadpool_limits(1)
    results = args.results or (QUICK_RESULTS if args.quick else RESULTS)
    if args.report or args.readme:
        text = report(results)
        print(text)
        with open(os.path.join(results, "report.md"), "w") as f:
            f.write(text.replace("#### ", "### ") + "\n")
        if args.readme:
            write_readme(report(results, plot=False, detail=False))
        return
    run_study(args.tasks, args.checkpoints, results, args.quick, args.repeats, args.only)


if __name__ == "__main__":
    main()
