"""
The vine method's rollout set (states chosen along the trunks), the K actions drawn at each, and the branch rollouts
that estimate their Q-values.

Choice of states: uniform over the visited trunk states, without replacement (the paper gives no rule; uniform is
the plain choice, and with trunks long compared to ``1 / (1 - gamma)`` it is close to the discounted visitation).
The indices are drawn before the trunk runs, so each chosen state is snapshotted when it is visited.
"""

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import obs_as_tensor

from sb3_trpo_ext.common.rollouts import RolloutPolicy, check_finite_observations, env_actions
from sb3_trpo_ext.common.snapshot import Snapshot
from sb3_trpo_ext.vine.branches import BranchObservationTransform, BranchWorkers


class VineSettings(Protocol):
    """What the rollout-set machinery reads from the algorithm (``VineTRPO`` provides it)."""

    policy: ActorCriticPolicy
    action_space: spaces.Space
    device: th.device
    gamma: float
    use_sde: bool
    sde_sample_freq: int
    n_actions_per_state: int
    rollout_length: int
    action_sampling: Literal["policy", "uniform"]
    bootstrap_branches: bool
    common_random_numbers: bool
    branch_envs_per_worker: int

    @property
    def uses_all_actions(self) -> bool: ...

    def _vine_rng(self) -> np.random.Generator: ...


Observation = np.ndarray | dict[str, np.ndarray]


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
        return _stack(self.observations_)


def _stack(observations: list[Observation]) -> Observation:
    if isinstance(observations[0], dict):
        return {key: np.stack([obs[key] for obs in observations]) for key in observations[0]}  # type: ignore[index]
    return np.stack(observations)  # type: ignore[arg-type]


def sample_branch_actions(algorithm: VineSettings, observations: Observation) -> tuple[np.ndarray, np.ndarray]:
    """
    The K actions at each rollout-set state, drawn from ``q``, with ``log q``.

    :param algorithm: the vine algorithm (its policy, action space and keywords)
    :param observations: the rollout-set observations
    :return: actions of shape ``(N, K, *action_shape)`` and ``log q`` of shape ``(N, K)``
    """
    space = algorithm.action_space
    n_states = len(next(iter(observations.values())) if isinstance(observations, dict) else observations)
    rng = algorithm._vine_rng()
    if algorithm.uses_all_actions:
        n = int(space.n)  # type: ignore[attr-defined]
        return np.tile(np.arange(n), (n_states, 1)), np.full((n_states, n), -np.log(n))
    n_actions = algorithm.n_actions_per_state
    if algorithm.action_sampling == "uniform":
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
    sampler = RolloutPolicy(algorithm.policy, n_states * n_actions, 1)
    actions, log_q, _ = sampler(_repeat(observations, n_actions))
    return actions.reshape(n_states, n_actions, *actions.shape[1:]), log_q.reshape(n_states, n_actions)


def _repeat(observations: Observation, times: int) -> Observation:
    if isinstance(observations, dict):
        return {key: np.repeat(value, times, axis=0) for key, value in observations.items()}
    return np.repeat(observations, times, axis=0)


def _env_actions(algorithm: VineSettings, actions: np.ndarray) -> np.ndarray:
    return env_actions(algorithm.policy, algorithm.action_space, actions)


def run_branch_rollouts(
    algorithm: VineSettings,
    workers: BranchWorkers,
    transform: BranchObservationTransform,
    rollout_set: RolloutSet,
    actions: np.ndarray,
) -> tuple[np.ndarray, int]:
    """
    Run the N x K branch rollouts in lockstep and estimate ``Q(s_n, a_{n,k})``.

    A branch ends at ``rollout_length`` steps (bootstrapped with ``gamma^m V(s_m)`` when ``bootstrap_branches``),
    at a termination (no bootstrap) or at a time-limit truncation (bootstrapped, as the trunk does).

    :param algorithm: the vine algorithm
    :param workers: the training env's workers
    :param transform: the VecEnv wrappers' transforms
    :param rollout_set: the states and their snapshots
    :param actions: the first action of each branch, shape ``(N, K, *action_shape)``
    :return: Q estimates of shape ``(N, K)`` and the number of simulator steps taken
    """
    n_states, n_actions = actions.shape[:2]
    n_branches = n_states * n_actions
    crn = algorithm.common_random_numbers
    state_of = np.repeat(np.arange(n_states), n_actions)
    reseeds = None if crn else algorithm._vine_rng().integers(0, 2**31, size=n_branches)
    # one noise sequence per state (common random numbers) or per branch, shared by all waves; with gSDE, one
    # exploration matrix per state or per branch
    sampler = RolloutPolicy(
        algorithm.policy,
        n_states if crn else n_branches,
        max(1, algorithm.rollout_length - 1),
        algorithm.sde_sample_freq if algorithm.use_sde else -1,
    )
    noise_rows = state_of if crn else np.arange(n_branches)
    # a copy, since it is updated in place
    env_actions = np.array(_env_actions(algorithm, actions.reshape(n_branches, *actions.shape[2:])))
    q_values = np.zeros(n_branches)
    wave_size = workers.n_workers * algorithm.branch_envs_per_worker
    wave_size = max(n_actions, wave_size - wave_size % n_actions)  # the K branches of a state share a wave
    steps = 0
    for first in range(0, n_branches, wave_size):
        wave = np.arange(first, min(first + wave_size, n_branches))
        starts: list[list[tuple[Snapshot, int | None]]] = [[] for _ in range(workers.n_workers)]
        for position, b in enumerate(wave):
            reseed = None if reseeds is None else int(reseeds[b])
            starts[position % workers.n_workers].append((rollout_set.snapshots[state_of[b]], reseed))
        workers.start(starts)
        sampler.step = 0
        steps += _run_wave(
            algorithm, workers, transform, rollout_set, wave, state_of, env_actions, q_values, sampler, noise_rows
        )
    return q_values.reshape(n_states, n_actions), steps


def _run_wave(
    algorithm: VineSettings,
    workers: BranchWorkers,
    transform: BranchObservationTransform,
    rollout_set: RolloutSet,
    wave: np.ndarray,
    state_of: np.ndarray,
    env_actions: np.ndarray,
    q_values: np.ndarray,
    sampler: RolloutPolicy,
    noise_rows: np.ndarray,
) -> int:
    """Step the branches of one wave (already started in the workers' pools) in lockstep; accumulate their Q."""
    length, gamma = algorithm.rollout_length, algorithm.gamma
    n_workers = workers.n_workers
    stacks = [
        np.stack([rollout_set.frame_stacks[state_of[b]][f] for b in wave]) for f in range(len(rollout_set.frame_stacks[0]))
    ]
    alive = np.ones(len(wave), dtype=bool)
    steps = 0
    for t in range(length):
        live = np.flatnonzero(alive)  # positions in the wave
        if live.size == 0:
            break
        work: list[list[tuple[int, Any]]] = [[] for _ in range(n_workers)]
        members: list[list[int]] = [[] for _ in range(n_workers)]
        for position in live:
            work[position % n_workers].append((int(position // n_workers), env_actions[wave[position]]))
            members[position % n_workers].append(int(position))
        flat = [transition for group in workers.step(work) for transition in group]
        order = np.array([position for group in members for position in group])
        branches = wave[order]
        steps += len(flat)
        raw_obs = _stack([transition[0] for transition in flat])
        raw_rewards = np.array([transition[1] for transition in flat], dtype=np.float32)
        terminated = np.array([transition[2] for transition in flat])
        truncated = np.array([transition[3] for transition in flat])
        obs, rewards, new_stacks = transform(raw_obs, raw_rewards, [s[order] for s in stacks])
        check_finite_observations(obs, "in a VineTRPO branch rollout")
        for stack, new_stack in zip(stacks, new_stacks, strict=True):
            stack[order] = new_stack
        q_values[branches] += gamma**t * rewards
        cut = ~terminated & (truncated | (t == length - 1))
        if t == length - 1 and not algorithm.bootstrap_branches:
            cut &= truncated
        if cut.any():
            with th.no_grad():
                values = algorithm.policy.predict_values(obs_as_tensor(_select(obs, cut), algorithm.device))  # type: ignore[arg-type]
            q_values[branches[cut]] += gamma ** (t + 1) * values.flatten().cpu().numpy()
        ended = terminated | truncated
        alive[order[ended]] = False
        if t < length - 1 and not ended.all():
            next_actions, _, _ = sampler(_select(obs, ~ended), noise_rows[branches[~ended]])
            env_actions[branches[~ended]] = _env_actions(algorithm, next_actions)
    return steps


def _select(obs: Observation, mask: np.ndarray) -> Observation:
    if isinstance(obs, dict):
        return {key: value[mask] for key, value in obs.items()}
    return obs[mask]
