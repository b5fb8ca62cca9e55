"""
The estimates of the vine study: the gradient and natural-gradient direction of one batch, as the algorithms compute
them in their update (:func:`~sb3_trpo_ext.common.natural_gradient.natural_direction`), from single-path batches
(:func:`single_path_estimate`) and from one vine iteration (:func:`vine_estimate`), each after a burn-in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.utils import obs_as_tensor, set_random_seed

from sb3_trpo_ext import VineTRPO
from sb3_trpo_ext.common.base import NaturalGradientAlgorithm
from sb3_trpo_ext.common.natural_gradient import natural_direction
from sb3_trpo_ext.common.policy_batch import AdvantageBatch, PolicyBatch
from sb3_trpo_ext.common.rollouts import collect_rollouts_fast
from sb3_trpo_ext.vine.rollout_set import VineBatch
from vine_study.checkpoint import Checkpoint, time_limit


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
    def concatenate(parts: Sequence[Samples]) -> Samples:
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
    them (:func:`~sb3_trpo_ext.common.natural_gradient.natural_direction` with the model's Fisher path, damping and
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
