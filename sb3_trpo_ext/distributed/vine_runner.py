"""
:class:`RayBranchRunner`: the vine's branch phase with the branches on a
:class:`~sb3_trpo_ext.distributed.RayBranchPool`, the snapshots still taken on the training env.

It is :class:`~sb3_trpo_ext.vine.branch_runner.BranchRunner` with two changes: the rollout-set states are captured on
the training env's own envs (a ``DummyVecEnv`` in process, or the workers of a ``SubprocVecEnv`` or
:class:`~sb3_trpo_ext.distributed.RayVecEnv`), and the waves go to the pool's actors, as many workers as the pool has
actors. The waves themselves are built by the same code (``BranchRunner.run``), so the branches, their noise and
their snapshots are those a ``SubprocVecEnv`` with as many workers would run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecEnvWrapper

from sb3_trpo_ext.distributed.branch_actor import layer_chain, split_wave
from sb3_trpo_ext.distributed.ray_vec_env import RayVecEnv
from sb3_trpo_ext.vine.branch_runner import BranchRunner
from sb3_trpo_ext.vine.branches import BRANCH_WORKER_ATTRIBUTE, BranchConfig, BranchTransform, BranchWorker
from sb3_trpo_ext.vine.rollout_set import RolloutSet
from sb3_trpo_ext.vine.snapshot import Snapshot, SnapshotError

if TYPE_CHECKING:
    from sb3_trpo_ext.distributed.branch_pool import RayBranchPool

Record = Callable[[str, Any], None]
"""Where the runner logs: ``record(key, value)`` (the model's ``logger.record``)."""


class RayBranchRunner(BranchRunner):
    """
    Runs the vine's branches on the actors of a Ray branch pool.

    :param venv: the training environment (a ``DummyVecEnv``, ``SubprocVecEnv`` or ``RayVecEnv``, possibly wrapped
        in ``VecNormalize``, ``VecTransposeImage``, ``VecFrameStack``, ``VecMonitor``)
    :param config: the branch settings (``branch_envs_per_worker`` clones per actor)
    :param rng: the random generator of the branch phase
    :param pool: the pool (started here if it is not yet)
    :param record: logs ``rollout/branch_retries`` after each branch phase (None: no logging)
    :raises ValueError: for a VecEnv the snapshots cannot be taken on
    """

    def __init__(
        self, venv: VecEnv, config: BranchConfig, rng: np.random.Generator, pool: RayBranchPool, record: Record | None
    ) -> None:
        self.venv, self.config, self.rng, self.pool, self.record = venv, config, rng, pool, record
        BranchTransform.of(venv)  # raises for wrappers that cannot be replayed
        base = venv
        while isinstance(base, VecEnvWrapper):
            base = base.venv
        self.base = base
        self.local = None  # waves are built per worker (the actors) with the policy shipped as weights
        self.trunk: BranchWorker | None = None
        """The in-process worker of a ``DummyVecEnv``'s envs (None: each worker of the training env has its own)."""
        if isinstance(base, DummyVecEnv):
            self.trunk = BranchWorker(base.envs)
        elif isinstance(base, (SubprocVecEnv, RayVecEnv)):
            for index in range(base.num_envs):  # one worker object per env (a RayVecEnv actor holds several envs)
                base.set_attr(BRANCH_WORKER_ATTRIBUTE, BranchWorker(), indices=[index])
        else:
            raise ValueError(
                f"VineTRPO with a RayBranchPool takes its snapshots on a DummyVecEnv, SubprocVecEnv or RayVecEnv, "
                f"got {type(base).__name__}."
            )
        self.pool.start()
        self.n_workers = self.pool.n_actors

    # ------------------------------------------------------------------ the training env's side: snapshots

    def _trunk_call(self, command: str, payload: Any, index: int | None) -> list[Any]:
        """Run ``command`` on the training env's worker of env ``index`` (None: every env); raise its error here."""
        if self.trunk is not None:
            replies = [self.trunk(command, payload)]
        else:
            indices = None if index is None else [index]
            replies = self.base.env_method(BRANCH_WORKER_ATTRIBUTE, command, payload, indices=indices)
        for position, (ok, value) in enumerate(replies):
            if not ok:
                where = f"env {index if index is not None else position}"
                raise SnapshotError(f"VineTRPO could not {command} on the training env's {where}: {value}")
        return [value for _, value in replies]

    def capture(self, index: int) -> Snapshot:
        """:param index: env index
        :return: the snapshot of that env's current state"""
        if self.trunk is not None:
            return self._trunk_call("capture", index, None)[0]
        return self._trunk_call("capture", 0, index)[0]

    def check(self) -> None:
        """
        Check that the training env can be snapshotted, that the actors' envs too, and that the actors' envs have
        the training env's wrapper chain (so that its snapshots restore there).

        :raises SnapshotError: naming the env or the actor, with the fix
        """
        self._trunk_call("check", True, None)
        self.pool.check()
        self.pool.check_chain(layer_chain(self.capture(0)))

    # ------------------------------------------------------------------ the actors' side: waves

    def _call(self, command: str, payloads: list[Any]) -> list[Any]:
        """Send one wave to every actor whose payload is not None; raise an actor's error here."""
        if command != "run_wave":
            raise ValueError(f"RayBranchRunner sends only waves to its actors, not {command!r}")
        shared, parts = split_wave(payloads)
        replies = self.pool.run_wave(shared, parts)
        results = []
        for index, reply in enumerate(replies):
            if reply is not None and not reply[0]:
                raise SnapshotError(f"VineTRPO branch actor {index} ({self.pool.places[index].describe()}) failed: {reply[1]}")
            results.append(None if reply is None else reply[1])
        return results

    def run(self, policy: ActorCriticPolicy, rollout_set: RolloutSet, actions: np.ndarray) -> tuple[np.ndarray, int]:
        """
        Run the N x K branches on the pool's actors (an actor lost during a wave is replaced and its share re-run).

        :param policy: the current policy
        :param rollout_set: the states, their snapshots and frame stacks
        :param actions: the first action of each branch, shape ``(N, K, *action_shape)``
        :return: Q estimates of shape ``(N, K)`` and the number of simulator steps taken
        """
        retries_before = self.pool.retries
        result = super().run(policy, rollout_set, actions)
        if self.record is not None:
            self.record("rollout/branch_retries", self.pool.retries - retries_before)
        return result
