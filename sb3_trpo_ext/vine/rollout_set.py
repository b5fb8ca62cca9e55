"""
The vine method's rollout set (states chosen along the trunks, snapshotted when visited) and the K actions drawn at
each.

Choice of states: uniform over the visited trunk states, without replacement (the paper gives no rule; uniform is
the plain choice, and with trunks long compared to ``1 / (1 - gamma)`` it is close to the discounted visitation).
The indices are drawn before the trunk runs, so each chosen state is snapshotted when it is visited.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_trpo_ext.common.backends import Backends
from sb3_trpo_ext.common.fast_mlp import MlpPlan
from sb3_trpo_ext.common.policy_batch import repeat_observations
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
