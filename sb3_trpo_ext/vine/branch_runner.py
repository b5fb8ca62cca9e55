"""
The main-process side of the vine's branch rollouts: :class:`BranchRunner` turns a rollout set and the K first
actions at each state into Q estimates, wave by wave.

Per wave it builds one :class:`~sb3_trpo_ext.vine.branches.Wave` message per worker (the policy's weights once, the
VecEnv wrappers' transforms, and per branch its snapshot, first action and noise) and gets the Q-values back: one
round trip per wave. With a ``DummyVecEnv`` one in-process worker runs every branch of the wave in lockstep (one
batched policy forward per step); with a ``SubprocVecEnv`` each worker process runs its share in parallel.

Common random numbers are exact wherever a branch runs: its noise travels with it, and the K branches of one state
get the same noise row (and the same snapshot, so the same simulator randomness).
"""

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecEnvWrapper

from sb3_trpo_ext.common.rollout_policy import RolloutNoise, env_action_function
from sb3_trpo_ext.vine.branches import (
    BRANCH_WORKER_ATTRIBUTE,
    BranchConfig,
    BranchTransform,
    BranchWorker,
    Wave,
    call_subproc_workers,
)
from sb3_trpo_ext.vine.rollout_set import RolloutSet
from sb3_trpo_ext.vine.snapshot import Snapshot, SnapshotError

Record = Callable[[str, Any], None]
"""Logs a value under a key (the model's ``logger.record``)."""


@runtime_checkable
class BranchExecutorSource(Protocol):
    """
    What runs the vine's branches elsewhere than the training env's workers hands VineTRPO its runner (a
    ``BranchRunner``): the vine knows this interface only, not where the branches run (Ray's pool,
    ``sb3_trpo_ext.distributed.RayBranchPool``, is one).
    """

    def branch_runner(self, venv: VecEnv, config: "BranchConfig", rng: np.random.Generator, record: Record | None) -> Any:
        """
        :param venv: the training environment, whose envs the snapshots are taken on
        :param config: the branch settings
        :param rng: the random generator of the branch phase
        :param record: logs the runner's own values (its retries)
        :return: the runner of the branch phase (a ``BranchRunner``)
        """


class BranchRunner:
    """
    Runs the vine's branches on the training VecEnv's workers, never touching the training envs themselves.

    :param venv: the training environment (a ``DummyVecEnv`` or ``SubprocVecEnv``, possibly wrapped in
        ``VecNormalize``, ``VecTransposeImage``, ``VecFrameStack``, ``VecMonitor``)
    :param config: the branch settings
    :param rng: the random generator of the branch phase (reseeds without common random numbers)
    :raises ValueError: for a VecEnv the branches cannot run on
    """

    def __init__(self, venv: VecEnv, config: BranchConfig, rng: np.random.Generator) -> None:
        self.venv = venv
        self.config = config
        self.rng = rng
        BranchTransform.of(venv)  # raises for wrappers that cannot be replayed
        base = venv
        while isinstance(base, VecEnvWrapper):
            base = base.venv
        self.base = base
        self.n_workers = base.num_envs
        self.local: BranchWorker | None = None
        if isinstance(base, SubprocVecEnv):
            base.set_attr(BRANCH_WORKER_ATTRIBUTE, BranchWorker())
        elif isinstance(base, DummyVecEnv):
            self.local = BranchWorker(base.envs)
        else:
            raise ValueError(
                f"VineTRPO runs its branches on a DummyVecEnv's or SubprocVecEnv's envs, got {type(base).__name__}: "
                "for a RayVecEnv (or any other VecEnv) give VineTRPO a branch pool, "
                "branch_pool=sb3_trpo_ext.distributed.RayBranchPool(env_id, n_actors=...)."
            )

    # ------------------------------------------------------------------ talking to the workers

    def _call(self, command: str, payloads: list[Any]) -> list[Any]:
        """Run ``command`` on every worker whose payload is not None; raise a worker's error here."""
        if self.local is not None:
            replies = [None if payload is None else self.local(command, payload) for payload in payloads]
        else:
            args = [None if payload is None else (command, payload) for payload in payloads]
            replies = call_subproc_workers(self.base, BRANCH_WORKER_ATTRIBUTE, args)  # type: ignore[arg-type]
        results = []
        for index, reply in enumerate(replies):
            if reply is not None and not reply[0]:
                raise SnapshotError(f"VineTRPO branch worker {index} failed: {reply[1]}")
            results.append(None if reply is None else reply[1])
        return results

    def check(self) -> list[str] | None:
        """
        :return: for each env whose step a snapshot does not replay, what differed (see
            ``sb3_trpo_ext.vine.snapshot.check.replay_mismatch``)
        :raises SnapshotError: when an env cannot be snapshotted, with the env's name and the fix
        """
        replies = self._call("check", [True] * (1 if self.local is not None else self.n_workers))
        return [problem for reply in replies for problem in reply]

    def capture(self, index: int) -> Snapshot:
        """:param index: env index
        :return: the snapshot of that env's current state"""
        if self.local is not None:
            return self._call("capture", [index])[0]
        return self._call("capture", [0 if i == index else None for i in range(self.n_workers)])[index]

    def frame_stacks(self, index: int) -> list[np.ndarray]:
        """:param index: env index
        :return: that env's current frame-stack buffers (one per ``VecFrameStack``)"""
        return BranchTransform.frame_stacks(self.venv, index)

    # ------------------------------------------------------------------ the branch phase

    def run(self, policy: ActorCriticPolicy, rollout_set: RolloutSet, actions: np.ndarray) -> tuple[np.ndarray, int]:
        """
        Run the N x K branches and estimate ``Q(s_n, a_{n,k})``.

        :param policy: the current policy
        :param rollout_set: the states, their snapshots and frame stacks
        :param actions: the first action of each branch, shape ``(N, K, *action_shape)``
        :return: Q estimates of shape ``(N, K)`` and the number of simulator steps taken
        """
        config, (n_states, n_actions) = self.config, actions.shape[:2]
        n_branches = n_states * n_actions
        state_of = np.repeat(np.arange(n_states), n_actions)
        crn = config.common_random_numbers
        reseeds = [None] * n_branches if crn else [int(seed) for seed in self.rng.integers(0, 2**31, size=n_branches)]
        # one noise sequence per state (common random numbers) or per branch; with gSDE, one exploration matrix each
        noise = RolloutNoise.draw(
            policy, n_states if crn else n_branches, max(1, config.rollout_length - 1), config.sde_sample_freq
        )
        noise_row = state_of if crn else np.arange(n_branches)
        to_env = env_action_function(policy, policy.action_space)
        first_actions = np.array(to_env(actions.reshape(n_branches, *actions.shape[2:])))
        transform = BranchTransform.of(self.venv)
        shipped = policy if self.local is not None else _shippable(policy)
        wave_size = self.n_workers * config.branch_envs_per_worker
        wave_size = max(n_actions, wave_size - wave_size % n_actions)  # the K branches of a state share a wave
        q_values = np.zeros(n_branches)
        steps = 0
        for first in range(0, n_branches, wave_size):
            wave = np.arange(first, min(first + wave_size, n_branches))
            worker_of = np.arange(len(wave)) % self.n_workers
            payloads: list[Wave | None] = []
            members_of: list[np.ndarray] = []
            if self.local is not None:  # one in-process worker runs the whole wave, its pools in lockstep
                groups = [np.arange(len(wave))]
            else:
                groups = [np.flatnonzero(worker_of == w) for w in range(self.n_workers)]
            for members in groups:
                branches = wave[members]
                members_of.append(branches)
                if len(branches) == 0:
                    payloads.append(None)
                    continue
                payloads.append(
                    Wave(
                        policy=shipped,
                        transform=transform,
                        snapshots=[rollout_set.snapshots[state_of[b]] for b in branches],
                        reseeds=[reseeds[b] for b in branches],
                        first_actions=first_actions[branches],
                        frame_stacks=_frame_stacks(rollout_set, state_of[branches]),
                        noise=noise.select_rows(noise_row[branches]),
                        pool_of=worker_of[members] if self.local is not None else np.zeros(len(branches), dtype=int),
                        config=config,
                    )
                )
            for branches, reply in zip(members_of, self._call("run_wave", payloads), strict=True):
                if reply is not None:
                    q_values[branches], wave_steps = reply
                    steps += wave_steps
        return q_values.reshape(n_states, n_actions), steps


def _frame_stacks(rollout_set: RolloutSet, states: np.ndarray) -> list[np.ndarray]:
    """Per frame stack, the buffers of the given rollout-set states, stacked."""
    if not rollout_set.frame_stacks or not rollout_set.frame_stacks[0]:
        return []
    return [np.stack([rollout_set.frame_stacks[s][f] for s in states]) for f in range(len(rollout_set.frame_stacks[0]))]


def _shippable(policy: ActorCriticPolicy) -> tuple[type, dict[str, Any], dict[str, np.ndarray]]:
    """The policy as a worker process rebuilds it: its class, constructor keywords and weights (on the CPU)."""
    kwargs = dict(policy._get_constructor_parameters())
    kwargs["lr_schedule"] = _unused_schedule  # the policy's own is a bound method; workers never train
    # NumPy, not tensors: torch pickles tensors sent through multiprocessing pipes as shared-memory handles, whose
    # hand-over through a helper thread can deadlock with SubprocVecEnv's worker loop
    return type(policy), kwargs, {key: value.detach().cpu().numpy() for key, value in policy.state_dict().items()}


def _unused_schedule(progress_remaining: float) -> float:
    return 0.0
