"""
Fast on-policy rollout collection that keeps every SB3 behaviour.

SB3's ``collect_rollouts`` runs the full actor-critic forward (actions, values and log-probabilities, building a
``torch.distributions`` object) once per environment step. Since the policy is fixed during a rollout, only the
*actions* are needed step by step. Here:

- each step runs only the actor (features -> actor MLP -> action head) and draws the action from noise generated
  for the whole rollout at once (one RNG call instead of one per step);
- values and log-probabilities of every stored observation are computed afterwards in one batched forward;
- truncated episodes are bootstrapped with the critic's value of the terminal observation (as SB3 does), also
  in one batch at the end.

Callbacks still see every step (``update_locals`` then ``on_step``, which can stop training), Monitor infos go to
the info buffer, ``dones`` mark episode starts, and ``VecNormalize`` is untouched (it lives in the env).
"""

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
    SquashedDiagGaussianDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_trpo_ext.common.fast_mlp import NumpyMlp, mlp_layers

if TYPE_CHECKING:
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm


class ActionSampler:
    """
    Draws actions from the current policy one step at a time, with the noise of a whole rollout drawn up front.

    Diagonal Gaussian, Categorical, MultiCategorical and Bernoulli policies take a fast path: only the actor runs (in
    NumPy for plain MLP policies, see :mod:`sb3_trpo_ext.common.fast_mlp`), no distribution object is built, and the
    noise comes from one torch RNG call per rollout (so ``seed`` still makes runs reproducible). gSDE and squashed
    Gaussians use the policy's own distribution.

    :param policy: the actor-critic policy (fixed for the rollout)
    :param n_envs: number of environments
    :param n_steps: length of the rollout (noise for this many steps is drawn at once)
    """

    def __init__(self, policy: ActorCriticPolicy, n_envs: int, n_steps: int) -> None:
        self.policy = policy
        self.step = 0
        dist = policy.action_dist
        self.kind = ""
        self.split: list[int] = []
        shape: tuple[int, ...] = (n_steps, n_envs)
        if policy.use_sde or isinstance(dist, SquashedDiagGaussianDistribution):
            pass
        elif isinstance(dist, DiagGaussianDistribution):
            self.kind = "gaussian"
            noise = th.randn(*shape, dist.action_dim)
            self.std = th.exp(policy.log_std.detach()).cpu().numpy()
        elif isinstance(dist, CategoricalDistribution):
            self.kind = "categorical"
            noise = _gumbel((*shape, dist.action_dim))
        elif isinstance(dist, MultiCategoricalDistribution):
            self.kind = "categorical"
            self.split = list(np.cumsum(dist.action_dims)[:-1])
            noise = _gumbel((*shape, int(sum(dist.action_dims))))
        elif isinstance(dist, BernoulliDistribution):
            self.kind = "bernoulli"
            noise = th.rand(*shape, dist.action_dims)
        if self.kind:
            self.noise = noise.numpy()
            layers = mlp_layers(policy, "actor")
            self.numpy_actor = NumpyMlp(layers) if layers is not None else None

    def _actor(self, obs: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        if self.numpy_actor is not None:
            return self.numpy_actor(obs)  # type: ignore[arg-type]
        policy = self.policy
        with th.no_grad():
            observations = preprocess_obs(
                obs_as_tensor(obs, policy.device), policy.observation_space, normalize_images=policy.normalize_images
            )
            features = policy.pi_features_extractor(observations)
            return policy.action_net(policy.mlp_extractor.forward_actor(features)).cpu().numpy()

    def __call__(self, obs: np.ndarray | dict[str, np.ndarray], noise_rows: np.ndarray | None = None) -> np.ndarray:
        """
        :param obs: a batch of observations, one per environment
        :param noise_rows: which row of this step's noise each observation uses (default: row i for observation i);
            the vine method passes the rollout-set state of each branch, so branches from one state share noise
        :return: the sampled actions
        """
        if not self.kind:
            with th.no_grad():
                return self.policy.get_distribution(obs_as_tensor(obs, self.policy.device)).get_actions().cpu().numpy()
        noise = self.noise[self.step]
        if noise_rows is not None:
            noise = noise[noise_rows]
        self.step += 1
        out = self._actor(obs)
        if self.kind == "gaussian":
            return out + self.std * noise
        if self.kind == "bernoulli":
            return (noise < 1.0 / (1.0 + np.exp(-out))).astype(np.float32)
        perturbed = out + noise  # Gumbel-max trick: argmax(logits + Gumbel noise) ~ Categorical(logits)
        if not self.split:
            return perturbed.argmax(axis=-1)
        return np.stack([chunk.argmax(axis=-1) for chunk in np.split(perturbed, self.split, axis=-1)], axis=-1)


def _gumbel(shape: tuple[int, ...]) -> th.Tensor:
    uniform = th.rand(shape).clamp_(min=1e-20, max=1.0 - 1e-7)
    return -th.log(-th.log(uniform))


def flatten_buffer_observations(rollout_buffer: RolloutBuffer, n_steps: int) -> np.ndarray | dict[str, np.ndarray]:
    """
    The first ``n_steps`` stored observations of every env, as one flat batch.

    :param rollout_buffer: a ``RolloutBuffer`` or ``DictRolloutBuffer``
    :param n_steps: number of filled steps
    :return: an array (or dict of arrays) of shape ``(n_steps * n_envs, *obs_shape)``
    """
    observations = rollout_buffer.observations
    if isinstance(observations, dict):
        return {k: v[:n_steps].reshape(-1, *v.shape[2:]) for k, v in observations.items()}
    return observations[:n_steps].reshape(-1, *observations.shape[2:])


def fill_values_and_log_probs(algorithm: "OnPolicyAlgorithm", rollout_buffer: RolloutBuffer, n_steps: int) -> None:
    """
    Compute the critic's values and the policy's log-probabilities of the stored samples in one batched forward.

    :param algorithm: the algorithm whose policy collected the rollout
    :param rollout_buffer: the filled buffer
    :param n_steps: number of filled steps
    """
    n_envs = rollout_buffer.n_envs
    obs = obs_as_tensor(flatten_buffer_observations(rollout_buffer, n_steps), algorithm.device)  # type: ignore[arg-type]
    actions = th.as_tensor(rollout_buffer.actions[:n_steps].reshape(n_steps * n_envs, -1), device=algorithm.device)
    policy = algorithm.policy
    with th.no_grad():
        values, log_probs, _ = policy.evaluate_actions(obs, _actions_for_policy(actions, policy))
    rollout_buffer.values[:n_steps] = values.reshape(n_steps, n_envs).cpu().numpy()
    rollout_buffer.log_probs[:n_steps] = log_probs.reshape(n_steps, n_envs).cpu().numpy()


def _actions_for_policy(actions: th.Tensor, policy: ActorCriticPolicy) -> th.Tensor:
    """Stored actions as the distribution's ``log_prob`` takes them (SB3 2.9 stores them in the space's dtype)."""
    if isinstance(policy.action_space, spaces.Discrete):
        return actions.flatten().long()
    return actions.float()


def collect_rollouts_fast(
    algorithm: "OnPolicyAlgorithm",
    env: VecEnv,
    callback: BaseCallback,
    rollout_buffer: RolloutBuffer,
    n_rollout_steps: int,
    before_step: Callable[[int], None] | None = None,
) -> bool:
    """
    Fill ``rollout_buffer`` with ``n_rollout_steps`` steps per env, as ``OnPolicyAlgorithm.collect_rollouts`` does.

    :param algorithm: the algorithm (its policy, ``_last_obs``, ``num_timesteps``, ... are used and updated)
    :param env: the training environment
    :param callback: called after each step; returning False stops collection
    :param rollout_buffer: the buffer to fill
    :param n_rollout_steps: steps per environment
    :param before_step: called with the step index before each step, while the envs are in the state of
        ``algorithm._last_obs`` (the vine method snapshots its rollout-set states there)
    :return: False if a callback asked to stop, True otherwise
    """
    assert algorithm._last_obs is not None, "No previous observation was provided"
    policy = algorithm.policy
    policy.set_training_mode(False)
    device = algorithm.device
    n_steps = 0
    rollout_buffer.reset()
    if algorithm.use_sde:
        policy.reset_noise(env.num_envs)
    sampler = ActionSampler(policy, env.num_envs, n_rollout_steps)
    placeholder = th.zeros(env.num_envs, device=device)
    is_box = isinstance(algorithm.action_space, spaces.Box)
    is_discrete = isinstance(algorithm.action_space, spaces.Discrete)
    plain_buffer = type(rollout_buffer) is RolloutBuffer and isinstance(algorithm.observation_space, spaces.Box)
    truncated_terminals: list[tuple[int, int, np.ndarray | dict[str, np.ndarray]]] = []
    callback.on_rollout_start()

    while n_steps < n_rollout_steps:
        if algorithm.use_sde and algorithm.sde_sample_freq > 0 and n_steps % algorithm.sde_sample_freq == 0:
            policy.reset_noise(env.num_envs)
        if before_step is not None:
            before_step(n_steps)
        actions = sampler(algorithm._last_obs)  # type: ignore[arg-type]
        clipped_actions = actions
        if is_box:
            if policy.squash_output:
                clipped_actions = policy.unscale_action(clipped_actions)
            else:
                clipped_actions = np.clip(actions, algorithm.action_space.low, algorithm.action_space.high)  # type: ignore[attr-defined]
        new_obs, rewards, dones, infos = env.step(clipped_actions)
        algorithm.num_timesteps += env.num_envs

        callback.update_locals(locals())
        if not callback.on_step():
            return False
        algorithm._update_info_buffer(infos, dones)
        if is_discrete:
            actions = actions.reshape(-1, 1)
        for idx, done in enumerate(dones):
            if done and infos[idx].get("terminal_observation") is not None and infos[idx].get("TimeLimit.truncated", False):
                truncated_terminals.append((n_steps, idx, infos[idx]["terminal_observation"]))
        if plain_buffer:  # what RolloutBuffer.add does, minus values and log-probs (filled in afterwards)
            pos = rollout_buffer.pos
            rollout_buffer.observations[pos] = algorithm._last_obs
            rollout_buffer.actions[pos] = actions.reshape(rollout_buffer.actions.shape[1:])
            rollout_buffer.rewards[pos] = rewards
            rollout_buffer.episode_starts[pos] = algorithm._last_episode_starts
            rollout_buffer.pos += 1
            rollout_buffer.full = rollout_buffer.pos == rollout_buffer.buffer_size
        else:
            rollout_buffer.add(
                algorithm._last_obs,  # type: ignore[arg-type]
                actions,
                rewards,
                algorithm._last_episode_starts,  # type: ignore[arg-type]
                placeholder,
                placeholder,
            )
        algorithm._last_obs = new_obs  # type: ignore[assignment]
        algorithm._last_episode_starts = dones
        n_steps += 1

    fill_values_and_log_probs(algorithm, rollout_buffer, n_steps)
    with th.no_grad():
        for step, idx, terminal_obs in truncated_terminals:
            terminal_value = policy.predict_values(policy.obs_to_tensor(terminal_obs)[0])[0]
            rollout_buffer.rewards[step, idx] += algorithm.gamma * float(terminal_value.item())
        last_values = policy.predict_values(obs_as_tensor(new_obs, device))  # type: ignore[arg-type]
    rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
    callback.update_locals(locals())
    callback.on_rollout_end()
    return True
