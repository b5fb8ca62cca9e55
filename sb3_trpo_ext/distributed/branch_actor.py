"""
The code that runs inside a Ray actor of :class:`~sb3_trpo_ext.distributed.RayBranchPool`, and the wave message it
receives.

A :class:`BranchActor` holds one env, built on the actor from a cloudpickled builder, and a
:class:`~sb3_trpo_ext.vine.branches.BranchWorker` that keeps clones of it: the same machinery that runs a wave next
to a ``SubprocVecEnv`` worker's env. A wave travels in two parts (:func:`split_wave`): a :class:`SharedWave` (the
policy's weights, the VecEnv wrappers' transforms, the branch settings and every snapshot of the wave, each state's
once) that the driver puts in the object store once and hands to every actor by reference, and one small
per-actor part (which snapshots, the first actions, the noise rows, the reseeds). :func:`join_wave` rebuilds on the
actor exactly the :class:`~sb3_trpo_ext.vine.branches.Wave` that a ``SubprocVecEnv`` worker would have received, so
the Q-values are the same bits.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

import cloudpickle
import numpy as np
import torch as th

from sb3_trpo_ext.vine.branches import BranchConfig, BranchTransform, BranchWorker, Wave
from sb3_trpo_ext.vine.snapshot import Snapshot, capture


@dataclass(frozen=True)
class SharedWave:
    """
    The part of a wave that every actor needs: sent once per wave through the object store.

    :param policy: the policy's class, constructor keywords and weights (NumPy, on the CPU)
    :param transform: the VecEnv wrappers' transforms
    :param config: the branch settings
    :param snapshots: the snapshots of the wave's states, each once
    """

    policy: tuple[type, dict[str, Any], dict[str, np.ndarray]]
    transform: BranchTransform
    config: BranchConfig
    snapshots: list[Snapshot]


@dataclass(frozen=True)
class WavePart:
    """
    One actor's share of a wave.

    :param wave: the actor's :class:`~sb3_trpo_ext.vine.branches.Wave` without the shared fields (``policy``,
        ``transform`` and ``config`` are None, ``snapshots`` empty)
    :param snapshot_indices: per branch, its snapshot's index in :attr:`SharedWave.snapshots`
    """

    wave: Wave
    snapshot_indices: list[int]


def split_wave(waves: list[Wave | None]) -> tuple[SharedWave, list[WavePart | None]]:
    """
    :param waves: one wave per actor (None: no branch for that actor), as
        :meth:`~sb3_trpo_ext.vine.branch_runner.BranchRunner.run` builds them: the same policy, transform and config
        objects in each
    :return: the shared part and one part per actor (None where the wave was None)
    :raises ValueError: when the waves do not share their policy, transform and config, or all are None
    """
    busy = [wave for wave in waves if wave is not None]
    if not busy:
        raise ValueError("split_wave needs at least one wave")
    first = busy[0]
    if any(w.policy is not first.policy or w.transform is not first.transform or w.config != first.config for w in busy):
        raise ValueError("the waves of one round must share their policy, transform and config objects")
    if not isinstance(first.policy, tuple):
        raise ValueError("a wave for Ray actors ships its policy as (class, keywords, NumPy weights), not the module")
    position: dict[int, int] = {}
    snapshots: list[Snapshot] = []
    parts: list[WavePart | None] = []
    for wave in waves:
        if wave is None:
            parts.append(None)
            continue
        indices = []
        for snapshot in wave.snapshots:
            if id(snapshot) not in position:
                position[id(snapshot)] = len(snapshots)
                snapshots.append(snapshot)
            indices.append(position[id(snapshot)])
        stripped = dataclasses.replace(wave, policy=None, transform=None, config=None, snapshots=[])  # type: ignore[arg-type]
        parts.append(WavePart(stripped, indices))
    return SharedWave(first.policy, first.transform, first.config, snapshots), parts


def join_wave(shared: SharedWave, part: WavePart) -> Wave:
    """
    :param shared: the wave's shared part (as the object store hands it out: its arrays may be read-only)
    :param part: this actor's part
    :return: the actor's wave, as a ``SubprocVecEnv`` worker would have received it
    """
    policy_class, kwargs, state_dict = shared.policy
    weights = {key: np.array(value) for key, value in state_dict.items()}  # writable copies for torch
    return dataclasses.replace(
        part.wave,
        policy=(policy_class, kwargs, weights),
        transform=shared.transform,
        config=shared.config,
        snapshots=[shared.snapshots[index] for index in part.snapshot_indices],
    )


def layer_chain(snapshot: Snapshot) -> list[tuple[str, str]]:
    """:return: the wrapper chain of a snapshot: ``(layer class, adapter)`` from the outermost layer in"""
    return [(state.layer, state.adapter) for state in snapshot.layers]


class BranchActor:
    """
    One actor of a :class:`~sb3_trpo_ext.distributed.RayBranchPool`: an env and the clones that run its waves.

    Torch runs on one thread here, as in a ``SubprocVecEnv`` worker: the actors run in parallel already.

    :param payload: a cloudpickled zero-argument env builder
    """

    def __init__(self, payload: bytes) -> None:
        th.set_num_threads(1)
        self.env = cloudpickle.loads(payload)()
        self.env.reset()  # as the training envs are: wrappers that check steps against the last reset (gymnasium's
        # PassiveEnvChecker) are not part of a snapshot, and the clones copy them from this env
        self.worker = BranchWorker([self.env])

    def describe(self) -> dict[str, Any]:
        """:return: where this actor runs (node id, node IP, process id) and its env's wrapper chain"""
        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "pid": os.getpid(),
            "chain": layer_chain(capture(self.env, live=False)),
        }

    def check(self) -> tuple[bool, Any]:
        """:return: ``(True, None)`` when the env can be snapshotted, else ``(False, message)``"""
        return self.worker("check", True)

    def run_wave(self, shared: SharedWave, part: WavePart) -> tuple[tuple[bool, Any], float]:
        """
        :param shared: the wave's shared part (Ray resolves the reference the driver passed)
        :param part: this actor's part
        :return: the worker's reply (``(True, (q_values, steps))`` or ``(False, message)``) and the seconds it took
        """
        start = time.perf_counter()
        reply = self.worker("run_wave", join_wave(shared, part))
        return reply, time.perf_counter() - start
