"""
The check of an env: capture, pickle, unpickle and restore its state, then replay a step of its simulator from a
snapshot (on a copy: restored twice, the same action must give the same observation, reward and end flags). A
simulator that draws random numbers a snapshot does not hold (NumPy's global ``np.random``, Python's ``random``,
torch's generator) fails the replay, and with it the vine's common random numbers.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import gymnasium as gym
import numpy as np

from sb3_trpo_ext.common.user_warnings import warn_at_user_call
from sb3_trpo_ext.vine.snapshot.base import SnapshotError
from sb3_trpo_ext.vine.snapshot.core import _env_name, _register_hint, capture, restore, wrapper_layers

STEP_PARTS = ("observation", "reward", "terminated", "truncated")
"""What a replayed step must reproduce (``info`` may hold timings and is not compared)."""

NOT_REPLAYABLE_HINT = (
    " The env draws random numbers that the snapshot does not hold (NumPy's global np.random, Python's random module, "
    "torch's generator) or keeps state that no adapter captures. Draw random numbers from self.np_random (gymnasium's "
    "per-env generator, which snapshots capture), or register an adapter that captures the rest "
    "(sb3_trpo_ext.vine.snapshot.register_snapshot_adapter)."
)
"""What to change when :func:`replay_mismatch` finds a difference."""


def _same(first: Any, second: Any) -> bool:
    """Exact equality of two step results (arrays, dicts and tuples of them, numbers; NaN equals NaN)."""
    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(_same(first[key], second[key]) for key in first)
    if isinstance(first, (tuple, list)) and isinstance(second, (tuple, list)):
        return len(first) == len(second) and all(_same(a, b) for a, b in zip(first, second, strict=True))
    a, b = np.asarray(first), np.asarray(second)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def replay_mismatch(env: gym.Env, seed: int = 0) -> str | None:
    """
    Replay a step of ``env``'s simulator from a snapshot, on a deep copy of its unwrapped env (``env`` is not
    touched, and its wrappers, step counters included, see nothing): reset the copy, capture it, step with an
    action, restore, step with the same action again, and compare.

    :param env: a (wrapped) gymnasium env
    :param seed: the copy's reset seed and the action's
    :return: what differed between the two steps, or ``None`` when they are identical, and when there is nothing to
        replay on: the unwrapped env does not deep-copy, or a copy cannot be reset, stepped, captured or restored (the
        vine's branches, which step copies of the env, report that error where it happens)
    """
    try:
        simulator = copy.deepcopy(wrapper_layers(env)[-1])
        simulator.reset(seed=seed)
        simulator.action_space.seed(seed)
        action = simulator.action_space.sample()
        snapshot = capture(simulator)
        first = simulator.step(action)[:4]
        restore(simulator, snapshot)
        second = simulator.step(action)[:4]
    except Exception:
        return None
    differ = [part for part, a, b in zip(STEP_PARTS, first, second, strict=True) if not _same(a, b)]
    if not differ:
        return None
    return (
        f"a step of {_env_name(env)} replayed from a snapshot (the same action, twice from the same state) gave a "
        f"different {', '.join(differ)}."
    )


def check_snapshottable(env: gym.Env, replay: bool = True) -> None:
    """
    Check that ``env`` can be snapshotted: capture, pickle, unpickle and restore its current state; then (with
    ``replay``) that a snapshot replays a step of its simulator, on a copy (``replay_mismatch`` in this module),
    warning when it does not.

    :param env: a (wrapped) gymnasium env
    :param replay: also replay a step from a snapshot
    :raises SnapshotError: naming the env and the layer, with how to fix it (register an adapter)
    :warns UserWarning: when a step replayed from a snapshot differs, with what to change (draw random numbers from
        ``self.np_random``)
    """
    snapshot = capture(env)
    for saved in snapshot.layers:
        try:
            pickle.dumps(saved.state)
        except Exception as exc:
            raise SnapshotError(
                f"Cannot snapshot {_env_name(env)}: the state of {saved.layer} (adapter {saved.adapter!r}) does not "
                f"pickle ({type(exc).__name__}: {exc}), so it cannot cross process boundaries. "
                f"{_register_hint(saved.layer)}"
            ) from exc
    restore(env, pickle.loads(pickle.dumps(snapshot)))
    problem = replay_mismatch(env) if replay else None
    if problem is not None:
        warn_at_user_call(f"{problem[0].upper()}{problem[1:]}{NOT_REPLAYABLE_HINT}")
