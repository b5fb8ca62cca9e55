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
import gc
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
        if BRANCH_WORKER_ATTRIBUTE in vars(layer):
            memo[id(vars(layer)[BRANCH_WORKER_ATTRIBUTE])] = None
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


BRANCH_WORKER_ATTRIBUTE = "_sb3_trpo_ext_branch_worker"
"""Name of the attribute that holds a :class:`BranchWorker` on a ``SubprocVecEnv`` worker's env."""


class BranchWorker:
    """
    The worker side of the branch machinery for one env: its snapshots and its pool of branch clones.

    With a ``DummyVecEnv`` it is built next to each env. With a ``SubprocVecEnv`` it is installed in each worker
    through the worker's own ``set_attr`` command (as the attribute :data:`BRANCH_WORKER_ATTRIBUTE` of the worker's
    env) and called through its ``env_method`` command, so any ``SubprocVecEnv`` works without a wrapper. There it
    finds its env on the first call: the object whose attribute it is. Every call returns ``(True, result)`` or
    ``(False, message)``, so that an error in a worker reaches the main process as a ``SnapshotError`` naming the
    original exception, instead of killing the worker.

    :param env: the env (None when installed in a worker, which finds it on the first call)
    """

    is_simulator_state = False
    """Snapshots of the env skip this attribute (see :mod:`sb3_trpo_ext.common.snapshot.fallback`)."""

    def __init__(self, env: gym.Env | None = None) -> None:
        self.env = env
        self.pool: BranchPool | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"env": None, "pool": None}  # shipped to a worker empty; it binds to the env there

    def __call__(self, command: str, payload: Any = None) -> tuple[bool, Any]:
        """
        :param command: ``"check"``, ``"capture"``, ``"start"`` (see :meth:`BranchPool.start`) or ``"step"`` (see
            :meth:`BranchPool.step`)
        :param payload: the command's argument
        :return: ``(True, result)`` or ``(False, message)``
        """
        try:
            if self.env is None:
                self.env = _env_holding(self)
            if command == "check":
                check_snapshottable(self.env)
                return True, None
            if command == "capture":
                return True, capture(self.env, live=False)
            if self.pool is None:
                self.pool = BranchPool(self.env)
            if command == "start":
                self.pool.start(payload)
                return True, None
            if command == "step":
                return True, self.pool.step(payload)
            raise ValueError(f"unknown branch worker command {command!r}")
        except Exception as error:  # reported in the main process, see BranchWorkers
            return False, f"{type(error).__name__}: {error}"


def _env_holding(worker: BranchWorker) -> gym.Env:
    """The env whose :data:`BRANCH_WORKER_ATTRIBUTE` is ``worker`` (found through the garbage collector's referrers)."""
    for referrer in gc.get_referrers(worker):
        owners = gc.get_referrers(referrer) if isinstance(referrer, dict) else [referrer]
        for owner in owners:
            if isinstance(owner, gym.Env) and vars(owner).get(BRANCH_WORKER_ATTRIBUTE) is worker:
                return owner
    raise SnapshotError("the branch worker is not installed on an env")


class VineWorkerWrapper(gym.Wrapper):
    """
    No longer needed: VineTRPO runs branches on any ``SubprocVecEnv``. Kept (a pass-through wrapper) so that code
    written for 0.1.0, ``make_vec_env(..., vec_env_cls=SubprocVecEnv, wrapper_class=VineWorkerWrapper)``, still works.
    """


def _unwrap_reply(reply: tuple[bool, Any], index: int) -> Any:
    ok, value = reply
    if not ok:
        raise SnapshotError(f"VineTRPO branch worker {index} failed: {value}")
    return value


class _VineWorkerWrapperAdapter:
    """VineWorkerWrapper holds no simulator state."""

    name = "VineWorkerWrapper"

    def matches(self, env_layer: Any) -> bool:
        return type(env_layer) is VineWorkerWrapper

    def capture(self, env_layer: Any) -> None:
        return None

    def restore(self, env_layer: Any, state: None) -> None:
        return None


register_snapshot_adapter(_VineWorkerWrapperAdapter())


def call_subproc_workers(venv: SubprocVecEnv, method: str, payloads: list[Any]) -> list[Any]:
    """
    Call ``env_method(method, *payload)`` in every worker with a payload (not None), in parallel, each with its own
    arguments (SB3's ``env_method`` sends all workers the same ones).

    This is the one place that uses SB3's private worker protocol: ``SubprocVecEnv.remotes`` and the
    ``("env_method", (name, args, kwargs))`` message that its worker answers with ``env.get_wrapper_attr(name)(*args,
    **kwargs)`` (tested in ``tests/test_vine.py``).

    :param venv: the ``SubprocVecEnv``
    :param method: the name of the env method (or callable attribute)
    :param payloads: per worker, a tuple of positional arguments, or None to skip the worker
    :return: per worker, the reply (None for skipped workers)
    """
    busy = [index for index, payload in enumerate(payloads) if payload is not None]
    for index in busy:
        venv.remotes[index].send(("env_method", (method, tuple(payloads[index]), {})))
    replies: list[Any] = [None] * len(payloads)
    for index in busy:
        replies[index] = venv.remotes[index].recv()
    return replies


class BranchWorkers:
    """
    The training VecEnv's workers, used for snapshots and branch steps (a :class:`BranchWorker` per env).

    :param venv: the training environment (possibly wrapped in VecEnv wrappers)
    :raises ValueError: for a VecEnv the branches cannot run on
    """

    def __init__(self, venv: VecEnv) -> None:
        base = venv
        while isinstance(base, VecEnvWrapper):
            base = base.venv
        self.local: list[BranchWorker] = []
        if isinstance(base, SubprocVecEnv):
            base.set_attr(BRANCH_WORKER_ATTRIBUTE, BranchWorker())
        elif isinstance(base, DummyVecEnv):
            self.local = [BranchWorker(env) for env in base.envs]
        else:
            raise ValueError(f"VineTRPO supports DummyVecEnv and SubprocVecEnv, got {type(base).__name__}.")
        self.base = base
        self.n_workers = base.num_envs

    def _call(self, command: str, payloads: list[Any]) -> list[Any]:
        """Run ``command`` in every worker whose payload is not None (in parallel for a ``SubprocVecEnv``)."""
        if self.local:
            replies = [None if p is None else worker(command, p) for worker, p in zip(self.local, payloads, strict=True)]
        else:
            args = [None if p is None else (command, p) for p in payloads]
            replies = call_subproc_workers(self.base, BRANCH_WORKER_ATTRIBUTE, args)  # type: ignore[arg-type]
        return [None if reply is None else _unwrap_reply(reply, index) for index, reply in enumerate(replies)]

    def capture(self, index: int) -> Snapshot:
        """:param index: env index
        :return: the snapshot of that env's current state"""
        return self._call("capture", [True if i == index else None for i in range(self.n_workers)])[index]

    def check(self) -> None:
        """:raises SnapshotError: when an env cannot be snapshotted, with the env's name and the fix"""
        self._call("check", [True] * self.n_workers)

    def start(self, items: list[list[tuple[Snapshot, int | None]]]) -> None:
        """:param items: per worker, ``(snapshot, reseed)`` per branch (its slot is its position)"""
        self._call("start", [payload or None for payload in items])

    def step(self, actions: list[list[tuple[int, Any]]]) -> list[list[Transition]]:
        """:param actions: per worker, ``(slot, action)`` per live branch
        :return: per worker, the transitions"""
        return [reply or [] for reply in self._call("step", [payload or None for payload in actions])]


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
