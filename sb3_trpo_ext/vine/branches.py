"""
The worker side of the vine's branch rollouts: a pool of env clones that runs a whole wave of branches by itself.

A :class:`BranchWorker` lives next to each env of the training VecEnv (in the same process for a ``DummyVecEnv``, in
the worker process for a ``SubprocVecEnv``). It keeps a :class:`BranchPool` of clones of its env (deep copies made
once, with their Monitor bookkeeping switched off, so the training env and its statistics are never touched). For a
wave it receives one :class:`Wave` message (the policy's weights, the VecEnv wrappers' transforms, and per branch
the snapshot to start from, the first action and the policy noise to act with) and answers with the branches'
Q-values: one round trip per wave. Inside, its clones step in lockstep with one batched policy forward per step.
That message is also the seam for running branches on other machines.

Private SB3 internals used here, each in one small function tested in ``tests/test_vine.py``:
``SubprocVecEnv.remotes`` and its ``env_method`` message (:func:`call_subproc_workers`), ``Monitor.results_writer``
(:func:`clone_without_bookkeeping`) and ``VecFrameStack.stacked_obs`` (:func:`frame_stack_parts`).

The VecEnv wrappers' effect on branch transitions: :class:`BranchTransform` replays ``VecFrameStack``,
``VecTransposeImage`` and ``VecNormalize`` (with frozen statistics) on the observations and rewards of branch
rollouts, so the policy and the critic see a branch as they see the trunk. Plain data, shipped in the :class:`Wave`.
"""

import copy
import gc
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import (
    SubprocVecEnv,
    VecEnv,
    VecEnvWrapper,
    VecFrameStack,
    VecMonitor,
    VecNormalize,
    VecTransposeImage,
)

from sb3_trpo_ext.common.backends import Backends
from sb3_trpo_ext.common.fast_mlp import MlpPlan, mlp_plan
from sb3_trpo_ext.common.policy_batch import index_observations
from sb3_trpo_ext.common.rollout_policy import (
    RolloutNoise,
    RolloutPolicy,
    check_finite_observations,
    env_action_function,
    stack_observations,
)
from sb3_trpo_ext.vine.snapshot import Snapshot, SnapshotError, capture, check_snapshottable, restore
from sb3_trpo_ext.vine.snapshot.adapters import VineWorkerWrapper as VineWorkerWrapper  # re-exported (0.1.0 API)
from sb3_trpo_ext.vine.snapshot.check import replay_mismatch
from sb3_trpo_ext.vine.snapshot.core import wrapper_layers

# ------------------------------------------------------------------ the VecEnv wrappers on branch transitions

SUPPORTED_VEC_WRAPPERS = (VecNormalize, VecTransposeImage, VecFrameStack, VecMonitor)


def frame_stack_parts(wrapper: VecFrameStack) -> list[tuple[str | None, Any]]:
    """
    The stacks of a ``VecFrameStack`` (SB3 internal: ``VecFrameStack.stacked_obs``): one for a Box observation space
    (key ``None``), one per key for a Dict space (``StackedObservations.sub_stacked_observations``).

    :param wrapper: the ``VecFrameStack``
    :return: ``(key, StackedObservations)`` pairs, each holding a Box's ``stacked_obs`` and ``channels_first``
    """
    stacked = wrapper.stacked_obs
    subs = getattr(stacked, "sub_stacked_observations", None)
    return [(None, stacked)] if subs is None else list(subs.items())


def frame_stack_state(wrapper: VecFrameStack, index: int) -> list[tuple[str | None, np.ndarray, int]]:
    """
    One env's frame-stack buffers and the axis frames are stacked on.

    :param wrapper: the ``VecFrameStack``
    :param index: the env index
    :return: per stack (see :func:`frame_stack_parts`): its key, a copy of the env's buffer, and the stacking axis of a
        batch of observations
    """
    return [
        (key, part.stacked_obs[index].copy(), 1 if part.channels_first else -1) for key, part in frame_stack_parts(wrapper)
    ]


@dataclass
class BranchTransform:
    """
    The VecEnv wrappers' observation and reward transforms, replayed on branch transitions with frozen statistics,
    as plain data that can be shipped to a worker.

    :param steps: from the innermost wrapper out: ``("frame_stack", (key or None, axis))`` (one per stacked Dict key),
        ``("transpose", image keys or None)``,
        ``("normalize", VecNormalize)`` (pickled without its venv, so only its statistics travel)
    """

    steps: list[tuple[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, venv: VecEnv) -> "BranchTransform":
        """
        :param venv: the training environment
        :return: its wrappers' transforms
        :raises ValueError: for a VecEnv wrapper whose effect cannot be replayed
        """
        steps: list[tuple[str, Any]] = []
        wrapper = venv
        while isinstance(wrapper, VecEnvWrapper):
            if isinstance(wrapper, VecFrameStack):  # reversed below: keep each wrapper's keys in order
                steps.extend(reversed([("frame_stack", (key, axis)) for key, _, axis in frame_stack_state(wrapper, 0)]))
            elif isinstance(wrapper, VecTransposeImage):
                if not wrapper.skip:  # a skipped VecTransposeImage leaves observations as they are
                    steps.append(("transpose", getattr(wrapper, "image_space_keys", None)))
            elif isinstance(wrapper, VecNormalize):
                steps.append(("normalize", wrapper))
            elif not isinstance(wrapper, VecMonitor):
                names = ", ".join(w.__name__ for w in SUPPORTED_VEC_WRAPPERS)
                raise ValueError(
                    f"VineTRPO cannot replay the VecEnv wrapper {type(wrapper).__name__} in branch rollouts; "
                    f"supported are {names}. Move its logic into a gymnasium wrapper of each env."
                )
            wrapper = wrapper.venv
        return cls(list(reversed(steps)))

    @staticmethod
    def frame_stacks(venv: VecEnv, index: int) -> list[np.ndarray]:
        """:param venv: the training environment
        :param index: env index
        :return: the current frame-stack buffers of that env, innermost first"""
        stacks = []
        wrapper = venv
        while isinstance(wrapper, VecEnvWrapper):
            if isinstance(wrapper, VecFrameStack):
                stacks.extend(reversed([buffer for _, buffer, _ in frame_stack_state(wrapper, index)]))
            wrapper = wrapper.venv
        return list(reversed(stacks))

    def __call__(self, obs: Any, rewards: np.ndarray, stacks: list[np.ndarray]) -> tuple[Any, np.ndarray, list[np.ndarray]]:
        """
        :param obs: raw observations of a batch of branches
        :param rewards: raw rewards
        :param stacks: the branches' frame-stack buffers (updated copies are returned)
        :return: the observations and rewards as the policy and critic see them, and the new stacks
        """
        new_stacks: list[np.ndarray] = []
        for kind, setting in self.steps:
            if kind == "frame_stack":
                key, axis = setting
                stacked = stacks[len(new_stacks)]
                frame = obs if key is None else obs[key]
                frame = np.concatenate([np.delete(stacked, np.s_[: frame.shape[axis]], axis=axis), frame], axis=axis)
                obs = frame if key is None else {**obs, key: frame}
                new_stacks.append(frame)
            elif kind == "transpose":
                if setting is None:
                    obs = VecTransposeImage.transpose_image(obs)
                else:
                    obs = {k: VecTransposeImage.transpose_image(v) if k in setting else v for k, v in obs.items()}
            else:
                obs = setting.normalize_obs(obs)
                rewards = setting.normalize_reward(rewards)
        return obs, rewards, new_stacks


BRANCH_WORKER_ATTRIBUTE = "_sb3_trpo_ext_branch_worker"
"""Name of the attribute that holds a :class:`BranchWorker` on a ``SubprocVecEnv`` worker's env."""


# ---------------------------------------------------------------------------------------------------- clones


def clone_without_bookkeeping(env: gym.Env) -> gym.Env:
    """
    A deep copy of ``env`` whose Monitor / RecordEpisodeStatistics layers step straight through (no statistics, no
    results file: the copy shares no file handle with ``env``) and that holds no branch worker.

    :param env: the env to clone (not modified)
    :return: the clone
    """
    layers = wrapper_layers(env)
    memo: dict[int, Any] = {}
    for layer in layers:
        if BRANCH_WORKER_ATTRIBUTE in vars(layer):
            memo[id(vars(layer)[BRANCH_WORKER_ATTRIBUTE])] = None
        if isinstance(layer, Monitor) and layer.results_writer is not None:  # SB3 internal: Monitor's file writer
            memo[id(layer.results_writer)] = None
    clone = copy.deepcopy(env, memo)
    for layer in wrapper_layers(clone):
        if isinstance(layer, (Monitor, gym.wrappers.RecordEpisodeStatistics)):
            vars(layer)["step"] = layer.env.step
            vars(layer)["reset"] = layer.env.reset
    return clone


class BranchPool:
    """
    Clones of one env that hold branch rollouts; lives next to the env.

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
            self.clones.append(clone_without_bookkeeping(self.env))
        for clone, (snapshot, reseed) in zip(self.clones, items, strict=False):
            restore(clone, snapshot)
            if reseed is not None:
                clone.unwrapped._np_random = np.random.default_rng(reseed)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------------- one wave


@dataclass(frozen=True)
class BranchConfig:
    """
    The vine's branch settings.

    :param gamma: the discount factor
    :param rollout_length: ``m``, steps per branch
    :param bootstrap: add ``gamma^m V(s_m)`` at the cut of a branch that did not end
    :param common_random_numbers: the K branches of a state share simulator randomness and policy noise
    :param branch_envs_per_worker: clones per worker; more branches run in successive waves
    :param backends: the algorithm's decision (``model.backends``), which the branches' policy calls follow
    :param sde_sample_freq: gSDE resampling frequency within a branch (-1: one exploration matrix per branch)
    """

    gamma: float
    rollout_length: int
    bootstrap: bool
    common_random_numbers: bool
    branch_envs_per_worker: int
    backends: Backends
    sde_sample_freq: int = -1


@dataclass
class Wave:
    """
    Everything a worker needs to run a wave of branches and estimate their Q-values, in one message.

    :param policy: the policy's constructor (class and keyword arguments) and weights (a ``state_dict``)
    :param transform: the VecEnv wrappers' transforms
    :param snapshots: per branch, the rollout-set state to start from
    :param reseeds: per branch, a seed for the clone's ``np_random`` (None: keep the snapshot's, common random
        numbers)
    :param first_actions: per branch, the first action as the env takes it
    :param frame_stacks: per frame stack, the branches' buffers at their start
    :param noise: per branch (row), the policy noise of the later steps
    :param pool_of: per branch, which of the worker's pools runs it (several only in-process, for a ``DummyVecEnv``)
    :param config: the branch settings (discount, ``m``, bootstrapping, the backends)
    """

    policy: tuple[type, dict[str, Any], dict[str, np.ndarray]] | ActorCriticPolicy
    transform: BranchTransform
    snapshots: list[Snapshot]
    reseeds: list[int | None]
    first_actions: np.ndarray
    frame_stacks: list[np.ndarray]
    noise: RolloutNoise
    pool_of: np.ndarray
    config: BranchConfig


def run_wave(
    pools: list[BranchPool], wave: Wave, policy: ActorCriticPolicy, plan: MlpPlan | None = None
) -> tuple[np.ndarray, int]:
    """
    Run a wave of branches in lockstep: restore, step ``m`` times (one batched policy forward per step) and sum the
    discounted rewards. A branch ends at ``m`` steps (bootstrapped with ``gamma^m V(s_m)`` when ``wave.config.bootstrap``),
    at a termination (no bootstrap) or at a time-limit truncation (bootstrapped, as the trunk does).

    :param pools: the pools the wave's branches run in
    :param wave: the wave
    :param policy: the policy (with the wave's weights)
    :param plan: the policy's MLP plan (default: read off the policy)
    :return: the Q estimates and the number of simulator steps taken
    """
    n_branches = len(wave.snapshots)
    slots = np.zeros(n_branches, dtype=int)
    for index, pool in enumerate(pools):
        members = np.flatnonzero(wave.pool_of == index)
        slots[members] = np.arange(len(members))
        pool.start([(wave.snapshots[b], wave.reseeds[b]) for b in members])
    clones = [pools[wave.pool_of[b]].clones[slots[b]] for b in range(n_branches)]
    config = wave.config
    sampler = RolloutPolicy(policy, wave.noise, config.backends, plan)
    to_env = env_action_function(policy, policy.action_space)
    stacks = [stack.copy() for stack in wave.frame_stacks]
    actions = np.array(wave.first_actions)
    q_values = np.zeros(n_branches)
    live = np.arange(n_branches)
    steps = 0
    for t in range(config.rollout_length):
        transitions = [clones[b].step(actions[b])[:4] for b in live]
        steps += len(live)
        raw_obs = stack_observations([transition[0] for transition in transitions])
        raw_rewards = np.array([transition[1] for transition in transitions], dtype=np.float32)
        terminated = np.array([transition[2] for transition in transitions], dtype=bool)
        truncated = np.array([transition[3] for transition in transitions], dtype=bool)
        obs, rewards, new_stacks = wave.transform(raw_obs, raw_rewards, [stack[live] for stack in stacks])
        for stack, new_stack in zip(stacks, new_stacks, strict=True):
            stack[live] = new_stack
        check_finite_observations(obs, "in a VineTRPO branch rollout")
        q_values[live] += config.gamma**t * rewards
        last = t == config.rollout_length - 1
        cut = ~terminated & (truncated | (last & config.bootstrap))
        if cut.any():
            with th.no_grad():
                values = policy.predict_values(obs_as_tensor(index_observations(obs, cut), policy.device))  # type: ignore[arg-type]
            q_values[live[cut]] += config.gamma ** (t + 1) * values.flatten().cpu().numpy()
        going_on = ~(terminated | truncated)
        if last or not going_on.any():
            break
        sampler.seek(t)
        next_actions, _, _ = sampler(index_observations(obs, going_on), rows=live[going_on])  # type: ignore[arg-type]
        live = live[going_on]
        actions[live] = to_env(next_actions)
    return q_values, steps


# ---------------------------------------------------------------------------------------------------- the worker


class BranchWorker:
    """
    The branch machinery of one env (or, in-process, of all the envs of a ``DummyVecEnv``): snapshots and waves.

    With a ``SubprocVecEnv`` it is installed in each worker through the worker's own ``set_attr`` command (as the
    attribute :data:`BRANCH_WORKER_ATTRIBUTE` of the worker's env) and called through its ``env_method`` command, so
    any ``SubprocVecEnv`` works without a wrapper; there it finds its env on the first call (the object whose
    attribute it is). Every call returns ``(True, result)`` or ``(False, message)``, so that an error in a worker
    reaches the main process as a ``SnapshotError`` naming the original exception, instead of killing the worker.

    :param envs: the envs (None when installed in a worker, which finds its env on the first call)
    """

    is_simulator_state = False
    """Snapshots of the env skip this attribute (see :mod:`sb3_trpo_ext.vine.snapshot.fallback`)."""

    def __init__(self, envs: list[gym.Env] | None = None) -> None:
        self.envs = envs
        self.pools: list[BranchPool] = []
        self.policy: ActorCriticPolicy | None = None
        self.policy_spec: tuple[type, dict[str, Any]] | None = None
        self.plan: tuple[ActorCriticPolicy, MlpPlan] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"envs": None, "pools": [], "policy": None, "policy_spec": None, "plan": None}  # shipped empty

    def __call__(self, command: str, payload: Any = None) -> tuple[bool, Any]:
        """
        :param command: ``"check"`` (result: what differed in the steps a snapshot did not replay, per env, see
            ``sb3_trpo_ext.vine.snapshot.check.replay_mismatch``), ``"capture"`` (payload: env index) or
            ``"run_wave"`` (payload: a :class:`Wave`)
        :param payload: the command's argument
        :return: ``(True, result)`` or ``(False, message)``
        """
        try:
            if self.envs is None:  # installed in a worker process
                self.envs = [_env_holding(self)]
                # one thread per worker: the workers run in parallel already, and a forked child that inherited the
                # parent's OpenMP thread pool hangs in its first multi-threaded torch operation
                th.set_num_threads(1)
            if command == "check":  # the replay's findings go back to VineTRPO, which warns in the main process
                for env in self.envs:
                    check_snapshottable(env, replay=False)
                return True, [problem for problem in map(replay_mismatch, self.envs) if problem is not None]
            if command == "capture":
                return True, capture(self.envs[payload], live=False)
            if command == "run_wave":
                if not self.pools:
                    self.pools = [BranchPool(env) for env in self.envs]
                policy = self._policy(payload.policy)
                if self.plan is None or self.plan[0] is not policy:  # read off once per policy object it is given
                    self.plan = (policy, mlp_plan(policy))
                return True, run_wave(self.pools, payload, policy, self.plan[1])
            raise ValueError(f"unknown branch worker command {command!r}")
        except Exception as error:  # reported in the main process, see BranchRunner
            return False, f"{type(error).__name__}: {error}"

    def _policy(self, shipped: tuple[type, dict[str, Any], dict[str, np.ndarray]] | ActorCriticPolicy) -> ActorCriticPolicy:
        """The policy of a wave: the main process's own (in-process), or a local copy given the shipped weights."""
        if isinstance(shipped, ActorCriticPolicy):
            return shipped
        policy_class, kwargs, state_dict = shipped
        if self.policy is None or self.policy_spec != (policy_class, kwargs):
            self.policy = policy_class(**kwargs)
            self.policy.set_training_mode(False)
            self.policy_spec = (policy_class, kwargs)
        self.policy.load_state_dict({key: th.as_tensor(value) for key, value in state_dict.items()})
        return self.policy


def _env_holding(worker: BranchWorker) -> gym.Env:
    """The env whose :data:`BRANCH_WORKER_ATTRIBUTE` is ``worker`` (found through the garbage collector's referrers)."""
    for referrer in gc.get_referrers(worker):
        owners = gc.get_referrers(referrer) if isinstance(referrer, dict) else [referrer]
        for owner in owners:
            if isinstance(owner, gym.Env) and vars(owner).get(BRANCH_WORKER_ATTRIBUTE) is worker:
                return owner
    raise SnapshotError("the branch worker is not installed on an env")


def call_subproc_workers(venv: SubprocVecEnv, method: str, payloads: list[Any]) -> list[Any]:
    """
    Call ``env_method(method, *payload)`` in every worker with a payload (not None), in parallel, each with its own
    arguments (SB3's ``env_method`` sends all workers the same ones).

    The one place that uses SB3's private worker protocol: ``SubprocVecEnv.remotes`` and the
    ``("env_method", (name, args, kwargs))`` message that its worker answers with ``env.get_wrapper_attr(name)(*args,
    **kwargs)``.

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
