"""
Branch rollouts of the vine method: from saved simulator states, all branches stepped in lockstep.

Each lockstep step sends every worker the list of ``(snapshot, action)`` pairs it must step; a worker restores each
branch's simulator state, steps it once with Monitor paused, and returns the new snapshot with the transition.
One batched policy forward then gives the next actions of every live branch. With a ``SubprocVecEnv`` the workers
step their branches in parallel.

The VecEnv wrappers' observation and reward transforms (``VecNormalize`` with frozen statistics,
``VecTransposeImage``, ``VecFrameStack``) are replayed on the branch observations by
:class:`BranchObservationTransform`; nothing in the training env is updated by branch steps.
"""

from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    SubprocVecEnv,
    VecEnv,
    VecEnvWrapper,
    VecFrameStack,
    VecMonitor,
    VecNormalize,
    VecTransposeImage,
)

from sb3_trpo_ext.common.snapshot import Snapshot, capture, monitor_paused, restore

BranchStep = tuple[Snapshot, Any, float, bool, bool]
"""What a worker returns for one branch: (new snapshot, observation, reward, terminated, truncated)."""

BRANCH_METHOD = "vine_step_branches"
SUPPORTED_VEC_WRAPPERS = (VecNormalize, VecTransposeImage, VecFrameStack, VecMonitor)


def step_branches(env: gym.Env, items: list[tuple[Snapshot, Any, int | None]]) -> list[BranchStep]:
    """
    Step each branch once: restore its state, step, snapshot the result. Monitor statistics are not touched.

    :param env: one (Monitor-wrapped) environment of the training VecEnv
    :param items: ``(snapshot, action, reseed)`` per branch; ``reseed`` (when not None) reseeds the env's
        ``np_random`` after the restore, which breaks common random numbers in the simulator
    :return: one :data:`BranchStep` per item
    """
    results: list[BranchStep] = []
    with monitor_paused(env):
        for snapshot, action, reseed in items:
            restore(env, snapshot)
            if reseed is not None:
                env.unwrapped._np_random = np.random.default_rng(reseed)  # type: ignore[attr-defined]
            obs, reward, terminated, truncated, _ = env.step(action)
            results.append((capture(env), obs, float(reward), bool(terminated), bool(truncated)))
    return results


class VineWorkerWrapper(gym.Wrapper):
    """
    Gives a ``SubprocVecEnv`` worker the branch-stepping method. Use it as ``wrapper_class`` of ``make_vec_env``::

        env = make_vec_env("Hopper-v5", n_envs=4, vec_env_cls=SubprocVecEnv, wrapper_class=VineWorkerWrapper)

    ``DummyVecEnv`` needs no wrapper.
    """

    def vine_step_branches(self, items: list[tuple[Snapshot, Any, int | None]]) -> list[BranchStep]:
        """:param items: see :func:`step_branches`
        :return: see :func:`step_branches`"""
        return step_branches(self, items)

    def vine_capture(self) -> Snapshot:
        """:return: the snapshot of this env's current state"""
        return capture(self)

    def vine_restore(self, snapshot: Snapshot) -> None:
        """:param snapshot: a snapshot to restore"""
        restore(self, snapshot)


class BranchWorkers:
    """
    The training VecEnv's workers, used for snapshots and branch steps.

    :param venv: the training environment (possibly wrapped in VecEnv wrappers)
    """

    def __init__(self, venv: VecEnv) -> None:
        base = venv
        while isinstance(base, VecEnvWrapper):
            base = base.venv
        if isinstance(base, SubprocVecEnv):
            if not all(base.env_method("has_wrapper_attr", BRANCH_METHOD)):
                raise ValueError(
                    "VineTRPO with a SubprocVecEnv needs each env wrapped in VineWorkerWrapper, e.g. "
                    "make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=VineWorkerWrapper)."
                )
        elif not isinstance(base, DummyVecEnv):
            raise ValueError(f"VineTRPO supports DummyVecEnv and SubprocVecEnv, got {type(base).__name__}.")
        self.base = base
        self.n_workers = base.num_envs

    def capture(self, index: int) -> Snapshot:
        """:param index: env index
        :return: the snapshot of that env's current state"""
        if isinstance(self.base, DummyVecEnv):
            return capture(self.base.envs[index])
        return self.base.env_method("vine_capture", indices=[index])[0]

    def restore(self, index: int, snapshot: Snapshot) -> None:
        """:param index: env index
        :param snapshot: the snapshot to restore there"""
        if isinstance(self.base, DummyVecEnv):
            restore(self.base.envs[index], snapshot)
        else:
            self.base.env_method("vine_restore", snapshot, indices=[index])

    def step(self, work: list[list[tuple[Snapshot, Any, int | None]]]) -> list[list[BranchStep]]:
        """
        Step every worker's branches (in parallel for SubprocVecEnv).

        :param work: per worker, its ``(snapshot, action, reseed)`` items
        :return: per worker, its results
        """
        if isinstance(self.base, DummyVecEnv):
            return [step_branches(env, items) if items else [] for env, items in zip(self.base.envs, work, strict=True)]
        busy = [index for index, items in enumerate(work) if items]
        for index in busy:
            self.base.remotes[index].send(("env_method", (BRANCH_METHOD, (work[index],), {})))
        results: list[list[BranchStep]] = [[] for _ in work]
        for index in busy:
            results[index] = self.base.remotes[index].recv()
        return results


class BranchObservationTransform:
    """
    Replays the VecEnv wrappers' observation and reward transforms on branch transitions, updating no statistics.

    :param venv: the training environment
    :raises ValueError: for a VecEnv wrapper whose effect cannot be replayed
    """

    def __init__(self, venv: VecEnv) -> None:
        chain = []
        wrapper = venv
        while isinstance(wrapper, VecEnvWrapper):
            if not isinstance(wrapper, SUPPORTED_VEC_WRAPPERS):
                names = ", ".join(w.__name__ for w in SUPPORTED_VEC_WRAPPERS)
                raise ValueError(
                    f"VineTRPO cannot replay the VecEnv wrapper {type(wrapper).__name__} in branch rollouts; "
                    f"supported are {names}. Move its logic into a gymnasium wrapper of each env."
                )
            chain.append(wrapper)
            wrapper = wrapper.venv
        self.inner_to_outer = list(reversed(chain))

    def frame_stacks(self, index: int) -> list[np.ndarray]:
        """:param index: env index
        :return: the current frame-stack buffers of that env (one per VecFrameStack)"""
        return [w.stacked_obs.stacked_obs[index].copy() for w in self.inner_to_outer if isinstance(w, VecFrameStack)]

    def __call__(
        self, obs: np.ndarray, rewards: np.ndarray, stacks: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """
        :param obs: raw observations of a batch of branches
        :param rewards: raw rewards
        :param stacks: the branches' frame-stack buffers (updated copies are returned)
        :return: the observations and rewards as the policy and critic see them, and the new stacks
        """
        new_stacks = []
        for wrapper in self.inner_to_outer:
            if isinstance(wrapper, VecFrameStack):
                stacked = stacks[len(new_stacks)]
                axis = 1 if wrapper.stacked_obs.channels_first else -1
                width = obs.shape[axis]
                stacked = np.concatenate([np.delete(stacked, np.s_[:width], axis=axis), obs], axis=axis)
                new_stacks.append(stacked)
                obs = stacked
            elif isinstance(wrapper, VecTransposeImage):
                obs = wrapper.transpose_observations(obs)
            elif isinstance(wrapper, VecNormalize):
                obs = wrapper.normalize_obs(obs)
                rewards = wrapper.normalize_reward(rewards)
        return obs, rewards, new_stacks
