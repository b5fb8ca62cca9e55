"""
Branch rollouts of the vine method: from saved simulator states, many branches stepped in lockstep.

Each worker of the training VecEnv keeps a pool of clones of its env (made once, by deep copy, with their Monitor
bookkeeping switched off). A branch is started by restoring a rollout-set snapshot into a clone; then every
lockstep step sends each worker the actions of its live branches and gets the transitions back, and one batched
policy forward gives the next actions of all branches. The training envs themselves are never touched, so the
trunk continues exactly where it was and Monitor statistics only ever see the trunk. With a ``SubprocVecEnv``, the
workers step their branches in parallel.

The VecEnv wrappers' observation and reward transforms (``VecNormalize`` with frozen statistics,
``VecTransposeImage``, ``VecFrameStack``) are replayed on branch observations by
:class:`BranchObservationTransform`; no statistics are updated by branch steps.
"""

import copy
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor
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

from sb3_trpo_ext.common.snapshot import (
    Snapshot,
    SnapshotError,
    capture,
    check_snapshottable,
    register_snapshot_adapter,
    restore,
)

Transition = tuple[Any, float, bool, bool]
"""What a branch step returns: (observation, reward, terminated, truncated)."""

SUPPORTED_VEC_WRAPPERS = (VecNormalize, VecTransposeImage, VecFrameStack, VecMonitor)


def _clone_without_bookkeeping(env: gym.Env) -> gym.Env:
    """A deep copy of ``env`` whose Monitor layers step straight through (no statistics, no file)."""
    layers = []
    layer: Any = env
    while True:
        layers.append(layer)
        if not isinstance(layer, gym.Wrapper):
            break
        layer = layer.env
    memo: dict[int, Any] = {}
    for layer in layers:
        if isinstance(layer, Monitor) and layer.results_writer is not None:
            memo[id(layer.results_writer)] = None
    clone = copy.deepcopy(env, memo)
    layer = clone
    while isinstance(layer, gym.Wrapper):
        if isinstance(layer, (Monitor, gym.wrappers.RecordEpisodeStatistics)):
            inner = layer.env
            vars(layer)["step"] = inner.step
            vars(layer)["reset"] = inner.reset
        layer = layer.env
    return clone


class BranchPool:
    """
    Clones of one env that hold branch rollouts; lives next to the env (in the worker for ``SubprocVecEnv``).

    :param env: the env to clone (never modified)
    """

    def __init__(self, env: gym.Env) -> None:
        self.env = env
        self.clones: list[gym.Env] = []

    def start(self, items: list[tuple[Snapshot, int | None]]) -> None:
        """
        Restore one snapshot into each of the first ``len(items)`` clones (making clones as needed).

        :param items: ``(snapshot, reseed)`` per branch; ``reseed`` (when not None) reseeds the clone's ``np_random``
            after the restore, which breaks common random numbers in the simulator
        """
        while len(self.clones) < len(items):
            self.clones.append(_clone_without_bookkeeping(self.env))
        for clone, (snapshot, reseed) in zip(self.clones, items, strict=False):
            restore(clone, snapshot)
            if reseed is not None:
                clone.unwrapped._np_random = np.random.default_rng(reseed)  # type: ignore[attr-defined]

    def step(self, actions: list[tuple[int, Any]]) -> list[Transition]:
        """
        :param actions: ``(slot, action)`` for each live branch
        :return: the transitions, in the same order
        """
        results: list[Transition] = []
        for slot, action in actions:
            obs, reward, terminated, truncated, _ = self.clones[slot].step(action)
            results.append((obs, float(reward), bool(terminated), bool(truncated)))
        return results


class VineWorkerWrapper(gym.Wrapper):
    """
    Gives a ``SubprocVecEnv`` worker the snapshot and branch methods. Use it as ``wrapper_class`` of ``make_vec_env``::

        env = make_vec_env("Hopper-v5", n_envs=4, vec_env_cls=SubprocVecEnv, wrapper_class=VineWorkerWrapper)

    ``DummyVecEnv`` needs no wrapper. Snapshots and branch clones are of the env inside this wrapper, which holds no
    state of its own. Each method returns ``(True, result)`` or ``(False, message)``, so that an error in a worker
    reaches the main process as a ``SnapshotError`` instead of killing the worker.
    """

    def vine_check(self) -> tuple[bool, Any]:
        """:return: whether the env inside can be snapshotted (a capture, pickle and restore round trip)"""
        return _guarded(check_snapshottable, self.env)

    def vine_capture(self) -> tuple[bool, Any]:
        """:return: the snapshot of the env inside this wrapper (what the branch pool's clones are copies of)"""
        return _guarded(capture, self.env, live=False)

    def vine_start_branches(self, items: list[tuple[Snapshot, int | None]]) -> tuple[bool, Any]:
        """:param items: see :meth:`BranchPool.start`
        :return: ``(True, None)`` or ``(False, message)``"""
        if not hasattr(self, "_branch_pool"):
            self._branch_pool = BranchPool(self.env)
        return _guarded(self._branch_pool.start, items)

    def vine_step_branches(self, actions: list[tuple[int, Any]]) -> tuple[bool, Any]:
        """:param actions: see :meth:`BranchPool.step`
        :return: ``(True, transitions)`` or ``(False, message)``"""
        return _guarded(self._branch_pool.step, actions)


def _guarded(function: Any, *args: Any, **kwargs: Any) -> tuple[bool, Any]:
    try:
        return True, function(*args, **kwargs)
    except Exception as error:  # reported in the main process, see BranchWorkers
        return False, f"{type(error).__name__}: {error}"


def _unwrap_reply(reply: tuple[bool, Any], index: int) -> Any:
    ok, value = reply
    if not ok:
        raise SnapshotError(f"VineTRPO branch worker {index} failed: {value}")
    return value


class _VineWorkerWrapperAdapter:
    """VineWorkerWrapper holds no simulator state (its branch pool is not part of the env's state)."""

    name = "VineWorkerWrapper"

    def matches(self, env_layer: Any) -> bool:
        return type(env_layer) is VineWorkerWrapper

    def capture(self, env_layer: Any) -> None:
        return None

    def restore(self, env_layer: Any, state: None) -> None:
        return None


register_snapshot_adapter(_VineWorkerWrapperAdapter())


class BranchWorkers:
    """
    The training VecEnv's workers, used for snapshots and branch steps.

    :param venv: the training environment (possibly wrapped in VecEnv wrappers)
    :raises ValueError: for a VecEnv the branches cannot run on
    """

    def __init__(self, venv: VecEnv) -> None:
        base = venv
        while isinstance(base, VecEnvWrapper):
            base = base.venv
        if isinstance(base, SubprocVecEnv):
            if not all(base.env_method("has_wrapper_attr", "vine_step_branches")):
                raise ValueError(
                    "VineTRPO with a SubprocVecEnv needs each env wrapped in VineWorkerWrapper, e.g. "
                    "make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=VineWorkerWrapper)."
                )
            self.pools: list[BranchPool] = []
        elif isinstance(base, DummyVecEnv):
            self.pools = [BranchPool(env) for env in base.envs]
        else:
            raise ValueError(f"VineTRPO supports DummyVecEnv and SubprocVecEnv, got {type(base).__name__}.")
        self.base = base
        self.n_workers = base.num_envs

    def capture(self, index: int) -> Snapshot:
        """:param index: env index
        :return: the snapshot of that env's current state"""
        if self.pools:
            return capture(self.base.envs[index], live=False)  # type: ignore[union-attr]
        return _unwrap_reply(self.base.env_method("vine_capture", indices=[index])[0], index)

    def check(self) -> None:
        """:raises SnapshotError: when an env cannot be snapshotted, with the env's name and the fix"""
        if self.pools:
            for pool in self.pools:
                check_snapshottable(pool.env)
        else:
            for index, reply in enumerate(self.base.env_method("vine_check")):
                _unwrap_reply(reply, index)

    def _call(self, method: str, payloads: list[Any]) -> list[Any]:
        """Call ``method`` on every worker with a non-empty payload, in parallel; ``[]`` for the others."""
        if self.pools:
            return [
                getattr(pool, method)(payload) if payload else [] for pool, payload in zip(self.pools, payloads, strict=True)
            ]
        busy = [index for index, payload in enumerate(payloads) if payload]
        remotes = self.base.remotes  # type: ignore[union-attr]
        for index in busy:
            remotes[index].send(("env_method", (f"vine_{method}_branches", (payloads[index],), {})))
        results: list[Any] = [[] for _ in payloads]
        for index in busy:
            results[index] = remotes[index].recv()
        return [_unwrap_reply(reply, index) if index in busy else reply for index, reply in enumerate(results)]

    def start(self, items: list[list[tuple[Snapshot, int | None]]]) -> None:
        """:param items: per worker, ``(snapshot, reseed)`` per branch (its slot is its position)"""
        self._call("start", items)

    def step(self, actions: list[list[tuple[int, Any]]]) -> list[list[Transition]]:
        """:param actions: per worker, ``(slot, action)`` per live branch
        :return: per worker, the transitions"""
        return self._call("step", actions)


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

    def __call__(self, obs: Any, rewards: np.ndarray, stacks: list[np.ndarray]) -> tuple[Any, np.ndarray, list[np.ndarray]]:
        """
        :param obs: raw observations of a batch of branches
        :param rewards: raw rewards
        :param stacks: the branches' frame-stack buffers (updated copies are returned)
        :return: the observations and rewards as the policy and critic see them, and the new stacks
        """
        new_stacks: list[np.ndarray] = []
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
