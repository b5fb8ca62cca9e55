"""
The vine method's rollout set and its estimators (paper, Section 5.2): the states chosen along the trunks
(snapshotted when visited), the K actions drawn at each, and the surrogate of their Q-values.

Choice of states: uniform over the visited trunk states, without replacement (the paper gives no rule; uniform is
the plain choice, and with trunks long compared to ``1 / (1 - gamma)`` it is close to the discounted visitation).
The indices are drawn before the trunk runs, so each chosen state is snapshotted when it is visited.

The surrogate estimators, pure functions on ``(N states, K actions)`` tensors:

- Eq. (15), small discrete action spaces, every action rolled out: ``L_n = sum_k pi_theta(a_k|s_n) Q(s_n, a_k)``.
- Eq. (16), any action space, self-normalized importance sampling:
  ``L_n = sum_k w_k Q(s_n, a_{n,k}) / sum_k w_k`` with ``w_k = pi_theta(a_{n,k}|s_n) / q(a_{n,k}|s_n)``.
  No baseline is needed: adding a constant to every ``Q(s_n, .)`` adds the same constant to ``L_n``.

The surrogate is the mean of ``L_n`` over the rollout set. :class:`VineBatch` is what a vine iteration hands to the
trust-region step.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.type_aliases import PyTorchObs

from sb3_trpo_ext.common.backends import Backends
from sb3_trpo_ext.common.fast_mlp import MlpPlan
from sb3_trpo_ext.common.policy_batch import PolicyBatch, repeat_observations
from sb3_trpo_ext.common.rollout_policy import Observation, RolloutNoise, RolloutPolicy, stack_observations
from sb3_trpo_ext.vine.snapshot import Snapshot


@dataclass
class RolloutSet:
    """The N rollout-set states of one iteration: where they are in the trunk, their snapshots and observations."""

    chosen: dict[int, list[int]]
    """Trunk step -> env indices chosen at that step."""
    snapshots: list[Snapshot] = field(default_factory=list)
    observations_: list[Observation] = field(default_factory=list)
    frame_stacks: list[list[np.ndarray]] = field(default_factory=list)

    @classmethod
    def choose(cls, n_steps: int, n_envs: int, n_states: int, rng: np.random.Generator) -> "RolloutSet":
        """
        :param n_steps: trunk steps per env
        :param n_envs: number of envs
        :param n_states: ``N``
        :param rng: random generator
        :return: an empty rollout set with ``N`` (step, env) positions drawn uniformly without replacement
        """
        chosen: dict[int, list[int]] = defaultdict(list)
        for flat in np.sort(rng.choice(n_steps * n_envs, size=n_states, replace=False)):
            chosen[int(flat) // n_envs].append(int(flat) % n_envs)
        return cls(chosen=dict(chosen))

    def envs_at_step(self, step: int) -> list[int]:
        """:param step: trunk step
        :return: env indices whose current state belongs to the rollout set"""
        return self.chosen.get(step, [])

    def add(self, step: int, index: int, snapshot: Snapshot, last_obs: Observation, stacks: list[np.ndarray]) -> None:
        """
        :param step: trunk step
        :param index: env index
        :param snapshot: the env's snapshot at that step
        :param last_obs: the VecEnv's current observations (all envs)
        :param stacks: the env's frame-stack buffers
        """
        if isinstance(last_obs, dict):
            self.observations_.append({key: np.array(value[index]) for key, value in last_obs.items()})
        else:
            self.observations_.append(np.array(last_obs[index]))
        self.snapshots.append(snapshot)
        self.frame_stacks.append(stacks)

    def observations(self) -> Observation:
        """:return: the rollout-set observations as one batch, shape ``(N, *obs_shape)``"""
        return stack_observations(self.observations_)


def uses_all_actions(action_space: spaces.Space, n_actions_per_state: int) -> bool:
    """:return: whether every action of a Discrete space is rolled out at each state (Eq. 15)"""
    return isinstance(action_space, spaces.Discrete) and n_actions_per_state >= int(action_space.n)


def sample_branch_actions(
    policy: ActorCriticPolicy,
    observations: Observation,
    n_actions: int,
    action_sampling: Literal["policy", "uniform"],
    rng: np.random.Generator,
    backends: Backends,
    plan: MlpPlan | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """
    The K actions at each rollout-set state, drawn from ``q``, with ``log q``.

    :param policy: the current policy (``q`` for ``action_sampling="policy"``)
    :param observations: the rollout-set observations
    :param n_actions: K
    :param action_sampling: ``"policy"`` or ``"uniform"`` (discrete spaces)
    :param rng: the random generator of uniform sampling
    :param backends: the algorithm's decision (``model.backends``)
    :param plan: the policy's MLP plan (``model.mlp_plan``; default: read off the policy)
    :return: actions of shape ``(N, K, *action_shape)`` and ``log q`` of shape ``(N, K)``
    """
    space = policy.action_space
    n_states = len(next(iter(observations.values())) if isinstance(observations, dict) else observations)
    if uses_all_actions(space, n_actions):
        n = int(space.n)  # type: ignore[attr-defined]
        return np.tile(np.arange(n), (n_states, 1)), np.full((n_states, n), -np.log(n))
    if action_sampling == "uniform":
        if isinstance(space, spaces.Discrete):
            actions = rng.integers(0, int(space.n), size=(n_states, n_actions))
            return actions, np.full(actions.shape, -np.log(int(space.n)))
        if isinstance(space, spaces.MultiDiscrete):
            nvec = space.nvec.reshape(-1)
            actions = rng.integers(0, nvec, size=(n_states, n_actions, len(nvec))).reshape(n_states, n_actions, *space.shape)
            return actions, np.full((n_states, n_actions), -np.log(nvec).sum())
        if isinstance(space, spaces.MultiBinary):
            n_bits = int(np.prod(space.shape))
            actions = rng.integers(0, 2, size=(n_states, n_actions, *space.shape)).astype(space.dtype)
            return actions, np.full((n_states, n_actions), -n_bits * np.log(2.0))
        raise ValueError("action_sampling='uniform' needs a discrete action space")
    # one noise row per branch: independent actions (with gSDE, each its own exploration matrix), log q their density
    sampler = RolloutPolicy(policy, RolloutNoise.draw(policy, n_states * n_actions, 1), backends, plan)
    actions, log_q, _ = sampler(repeat_observations(observations, n_actions))
    return actions.reshape(n_states, n_actions, *actions.shape[1:]), log_q.reshape(n_states, n_actions)


def all_actions_surrogate(log_prob: th.Tensor, q_values: th.Tensor) -> th.Tensor:
    """
    Eq. (15): ``mean_n sum_k pi_theta(a_k | s_n) Q(s_n, a_k)``, when the K actions are all the actions.

    :param log_prob: ``log pi_theta(a_k | s_n)``, shape ``(N, K)``
    :param q_values: ``Q(s_n, a_k)``, shape ``(N, K)``
    :return: the surrogate (scalar)
    """
    return (th.exp(log_prob) * q_values).sum(dim=1).mean()


def importance_sampling_surrogate(log_prob: th.Tensor, log_q: th.Tensor, q_values: th.Tensor) -> th.Tensor:
    """
    Eq. (16): ``mean_n [sum_k w_k Q(s_n, a_{n,k})] / [sum_k w_k]``, ``w_k = pi_theta(a_{n,k}|s_n) / q(a_{n,k}|s_n)``.

    Computed in log space for stability: the weights are a softmax over ``k`` of ``log pi_theta - log q``.

    :param log_prob: ``log pi_theta(a_{n,k} | s_n)``, shape ``(N, K)``
    :param log_q: ``log q(a_{n,k} | s_n)`` of the sampling distribution, shape ``(N, K)``
    :param q_values: ``Q(s_n, a_{n,k})``, shape ``(N, K)``
    :return: the surrogate (scalar)
    """
    weights = th.softmax(log_prob - log_q, dim=1)
    return (weights * q_values).sum(dim=1).mean()


@dataclass
class VineBatch(PolicyBatch):
    """
    One vine iteration's samples: N rollout-set states, K actions at each, their Q estimates and ``log q``.

    :param observations: the states, each repeated K times (state-major), ``(N * K, *obs_shape)``
    :param actions: the actions, ``(N * K, ...)`` as the distributions' ``log_prob`` takes them
    :param q_values: ``Q(s_n, a_{n,k})``, ``(N, K)``
    :param log_q: ``log q(a_{n,k} | s_n)`` of the distribution the actions were drawn from, ``(N, K)``
    :param all_actions: the K actions are all the actions of a Discrete space (Eq. 15), else Eq. (16)
    """

    observations: PyTorchObs
    actions: th.Tensor
    q_values: th.Tensor
    log_q: th.Tensor
    all_actions: bool

    def surrogate(self, log_prob: th.Tensor, old_log_prob: th.Tensor) -> th.Tensor:
        """Eq. (15) or Eq. (16) (the old log-probabilities are not needed: ``q`` is the sampling density)."""
        log_prob = log_prob.reshape(self.q_values.shape)
        if self.all_actions:
            return all_actions_surrogate(log_prob, self.q_values)
        return importance_sampling_surrogate(log_prob, self.log_q, self.q_values)

    def is_finite(self) -> bool:
        return bool(th.isfinite(self.q_values).all())
