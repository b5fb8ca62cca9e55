"""VecEnv support: :class:`SnapshotWrapper` for ``SubprocVecEnv`` workers, the VecEnv-wrapper adapters and their
registry, :func:`capture_vec` / :func:`restore_vec`, the frame stacks, :func:`monitor_paused_vec`, and
:func:`check_snapshottable` (envs and VecEnvs)."""

from __future__ import annotations

import pickle
import weakref
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecCheckNan,
    VecEnv,
    VecEnvWrapper,
    VecExtractDictObs,
    VecFrameStack,
    VecMonitor,
    VecNormalize,
    VecTransposeImage,
)

from sb3_trpo_ext.common.snapshot.core import (
    LayerState,
    Snapshot,
    SnapshotError,
    _adapter_name,
    _ClassAdapter,
    _env_name,
    _register_hint,
    _set_array,
    _validate_adapter,
    capture,
    restore,
)
from sb3_trpo_ext.common.snapshot.monitor import monitor_paused
from sb3_trpo_ext.common.snapshot.wrappers import _StatelessWrapperAdapter


def check_snapshottable(env: gym.Env | VecEnv) -> None:
    """
    Check that ``env`` can be snapshotted: capture, pickle, unpickle and restore its current state.

    :param env: a (wrapped) gymnasium env, or a VecEnv (every env is checked, see :func:`capture_vec`)
    :raises SnapshotError: naming the env and the layer, with how to fix it (register an adapter)
    """
    if isinstance(env, VecEnv):
        for index in range(env.num_envs):
            snapshot = capture_vec(env, index)
            restore_vec(env, index, _pickle_round_trip(snapshot, f"env {index} of {type(env).__name__}"))
        return
    snapshot = capture(env)
    restore(env, _pickle_round_trip(snapshot, _env_name(env)))


def _pickle_round_trip(snapshot: Snapshot, name: str) -> Snapshot:
    for saved in (*snapshot.layers, *(snapshot.vec_layers or ())):
        try:
            pickle.dumps(saved.state)
        except Exception as exc:
            raise SnapshotError(
                f"Cannot snapshot {name}: the state of {saved.layer} (adapter {saved.adapter!r}) does not pickle "
                f"({type(exc).__name__}: {exc}), so it cannot cross process boundaries. "
                f"{_register_hint(saved.layer)}"
            ) from exc
    return pickle.loads(pickle.dumps(snapshot))


class SnapshotWrapper(gym.Wrapper):
    """
    Gives a ``SubprocVecEnv`` worker's env the methods :func:`capture_vec`, :func:`restore_vec` and
    :func:`monitor_paused_vec` call through ``env_method``. It must be the outermost wrapper (the state of wrappers
    outside it could not be reached), which is what ``wrapper_class`` of ``make_vec_env`` gives::

        venv = make_vec_env("Hopper-v5", n_envs=4, vec_env_cls=SubprocVecEnv, wrapper_class=SnapshotWrapper)

    It changes nothing else. ``DummyVecEnv`` does not need it.

    :param env: the env to wrap
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._pause: ExitStack | None = None

    def get_snapshot(self, live: bool = True) -> Snapshot:
        """
        :param live: see :func:`capture`
        :return: the snapshot of this env (see :func:`capture`)
        """
        return capture(self, live)

    def set_snapshot(self, snapshot: Snapshot) -> None:
        """:param snapshot: a snapshot to restore (see :func:`restore`)"""
        restore(self, snapshot)

    def check_snapshottable(self) -> None:
        """:raises SnapshotError: see :func:`check_snapshottable`"""
        check_snapshottable(self)

    def snapshot_call(self, method: str, *args: Any) -> tuple[bool, Any]:
        """
        What :func:`capture_vec`, :func:`restore_vec` and :func:`monitor_paused_vec` call through ``env_method``: an
        exception is returned rather than raised, since it would end a ``SubprocVecEnv`` worker.

        :param method: ``"get_snapshot"``, ``"set_snapshot"``, ``"pause_monitors"`` or ``"resume_monitors"``
        :param args: its arguments
        :return: ``(True, result)``, or ``(False, message)`` when it raised
        """
        if method not in ("get_snapshot", "set_snapshot", "pause_monitors", "resume_monitors"):
            return False, f"unknown snapshot method {method!r}"
        try:
            return True, getattr(self, method)(*args)
        except Exception as exc:
            return False, str(exc) if isinstance(exc, SnapshotError) else f"{type(exc).__name__}: {exc}"

    def pause_monitors(self) -> None:
        """Enter :func:`monitor_paused` (until :meth:`resume_monitors`); does nothing when already paused."""
        if self._pause is None:
            stack = ExitStack()
            stack.enter_context(monitor_paused(self))
            self._pause = stack

    def resume_monitors(self) -> None:
        """Leave :func:`monitor_paused`; does nothing when not paused."""
        if self._pause is not None:
            stack, self._pause = self._pause, None
            stack.close()


_StatelessWrapperAdapter.classes = (*_StatelessWrapperAdapter.classes, SnapshotWrapper)


def _vec_chain(venv: VecEnv) -> tuple[list[VecEnvWrapper], VecEnv]:
    wrappers = []
    while isinstance(venv, VecEnvWrapper):
        wrappers.append(venv)
        venv = venv.venv
    return wrappers, venv


class _VecFrameStackAdapter(_ClassAdapter):
    """VecFrameStack: that env's stacked frames."""

    name = "vec_frame_stack"
    classes = (VecFrameStack,)

    def capture(self, vec_wrapper: VecFrameStack, index: int) -> np.ndarray | dict[str, np.ndarray]:
        stacked = vec_wrapper.stacked_obs
        if hasattr(stacked, "sub_stacked_observations"):
            return {key: sub.stacked_obs[index].copy() for key, sub in stacked.sub_stacked_observations.items()}
        return stacked.stacked_obs[index].copy()

    def restore(self, vec_wrapper: VecFrameStack, index: int, state: np.ndarray | dict[str, np.ndarray]) -> None:
        stacked = vec_wrapper.stacked_obs
        if isinstance(state, dict):
            for key, value in state.items():
                _set_array(stacked.sub_stacked_observations[key].stacked_obs[index], value)
        else:
            _set_array(stacked.stacked_obs[index], state)


class _VecNormalizeAdapter(_ClassAdapter):
    """VecNormalize: that env's discounted-return accumulator; never the running statistics."""

    name = "vec_normalize"
    classes = (VecNormalize,)

    def capture(self, vec_wrapper: VecNormalize, index: int) -> float:
        return float(vec_wrapper.returns[index])

    def restore(self, vec_wrapper: VecNormalize, index: int, state: float) -> None:
        vec_wrapper.returns[index] = state


class _VecMonitorAdapter(_ClassAdapter):
    """VecMonitor: that env's episode accumulators; never the episode count nor the results file."""

    name = "vec_monitor"
    classes = (VecMonitor,)

    def capture(self, vec_wrapper: VecMonitor, index: int) -> tuple[Any, Any]:
        return vec_wrapper.episode_returns[index].copy(), vec_wrapper.episode_lengths[index].copy()

    def restore(self, vec_wrapper: VecMonitor, index: int, state: tuple[Any, Any]) -> None:
        vec_wrapper.episode_returns[index], vec_wrapper.episode_lengths[index] = state


class _VecStatelessAdapter(_ClassAdapter):
    name = "vec_stateless"
    exact = True
    classes = (VecTransposeImage, VecExtractDictObs, VecCheckNan)

    def capture(self, vec_wrapper: VecEnvWrapper, index: int) -> None:
        return None

    def restore(self, vec_wrapper: VecEnvWrapper, index: int, state: None) -> None:
        pass


_BUILTIN_VEC_ADAPTERS: list[Any] = [
    _VecStatelessAdapter(),
    _VecFrameStackAdapter(),
    _VecNormalizeAdapter(),
    _VecMonitorAdapter(),
]
_USER_VEC_ADAPTERS: list[Any] = []


def register_vec_snapshot_adapter(adapter: Any) -> Any:
    """
    Register an adapter for the per-env state of a ``VecEnvWrapper`` the built-in ones do not handle (tried first,
    the most recently registered first).

    :param adapter: an object (or a class, instantiated without arguments) with ``matches(vec_wrapper) -> bool``,
        ``capture(vec_wrapper, index) -> Any`` and ``restore(vec_wrapper, index, state) -> None``
    :return: the registered adapter instance
    :raises TypeError: when a method is missing
    """
    adapter = _validate_adapter(adapter, ("matches", "capture", "restore"))
    unregister_vec_snapshot_adapter(adapter)
    _USER_VEC_ADAPTERS.insert(0, adapter)
    return adapter


def unregister_vec_snapshot_adapter(adapter: Any) -> None:
    """:param adapter: an adapter returned by :func:`register_vec_snapshot_adapter`"""
    _USER_VEC_ADAPTERS[:] = [registered for registered in _USER_VEC_ADAPTERS if registered is not adapter]


def _find_vec_adapter(vec_wrapper: VecEnvWrapper) -> Any:
    for adapter in (*_USER_VEC_ADAPTERS, *_BUILTIN_VEC_ADAPTERS):
        if adapter.matches(vec_wrapper):
            return adapter
    raise SnapshotError(
        f"The VecEnv wrapper {type(vec_wrapper).__name__} has no snapshot adapter, so its per-env state cannot be "
        "captured. If it keeps no per-env state, or to capture it, register an adapter with "
        "sb3_trpo_ext.common.snapshot.register_vec_snapshot_adapter(adapter) (matches(vec_wrapper) -> bool, "
        "capture(vec_wrapper, index) -> state, restore(vec_wrapper, index, state) -> None)."
    )


def _check_index(venv: VecEnv, index: int) -> None:
    if not 0 <= index < venv.num_envs:
        raise IndexError(f"env index {index} out of range for a VecEnv of {venv.num_envs} envs")


_CHECKED_WORKERS: weakref.WeakSet[VecEnv] = weakref.WeakSet()


def _check_worker_wrapper(base: VecEnv) -> None:
    """The worker's outermost env must be a SnapshotWrapper (checked once per VecEnv)."""
    if base in _CHECKED_WORKERS:
        return
    outermost = base.get_attr("__class__")
    bad = [i for i, cls in enumerate(outermost) if not (isinstance(cls, type) and issubclass(cls, SnapshotWrapper))]
    if bad:
        raise SnapshotError(
            f"Cannot snapshot the envs of a {type(base).__name__} unless each is wrapped (outermost) in "
            f"sb3_trpo_ext.common.snapshot.SnapshotWrapper; env {bad[0]} is a {outermost[bad[0]].__name__}. Build it with "
            "make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=SnapshotWrapper)."
        )
    _CHECKED_WORKERS.add(base)


def _worker_call(base: VecEnv, method: str, indices: list[int], *args: Any) -> list[Any]:
    """Call a :class:`SnapshotWrapper` method in the workers, raising their errors here."""
    _check_worker_wrapper(base)
    results = []
    for index, (ok, result) in zip(indices, base.env_method("snapshot_call", method, *args, indices=indices), strict=True):
        if not ok:
            raise SnapshotError(f"env {index} of the {type(base).__name__}: {result}")
        results.append(result)
    return results


def capture_vec(venv: VecEnv, index: int, live: bool = True) -> Snapshot:
    """
    Capture env ``index`` of a VecEnv: its gymnasium env (directly for ``DummyVecEnv``, in the worker through
    ``env_method`` otherwise, which needs :class:`SnapshotWrapper`) and its per-env state in the
    VecEnv wrappers (``VecFrameStack`` frames, ``VecNormalize`` return accumulator, ``VecMonitor`` accumulators).

    :param venv: the VecEnv, possibly wrapped
    :param index: env index
    :param live: see :func:`capture`
    :return: a picklable snapshot
    :raises SnapshotError: when the env or a VecEnv wrapper cannot be snapshotted
    """
    _check_index(venv, index)
    wrappers, base = _vec_chain(venv)
    vec_layers = tuple(
        LayerState(type(wrapper).__qualname__, _adapter_name(adapter), adapter.capture(wrapper, index))
        for wrapper in wrappers
        for adapter in (_find_vec_adapter(wrapper),)
    )
    if isinstance(base, DummyVecEnv):
        snapshot = capture(base.envs[index], live)
    else:
        snapshot = _worker_call(base, "get_snapshot", [index], live)[0]
    return replace(snapshot, vec_layers=vec_layers)


def restore_vec(venv: VecEnv, index: int, snapshot: Snapshot) -> None:
    """
    Restore ``snapshot`` into env ``index`` of a VecEnv (it may come from another index or another VecEnv with the
    same wrappers). The VecEnv wrappers' per-env state is restored when the snapshot has it (taken by
    :func:`capture_vec`); their running statistics (``VecNormalize``) and finished-episode statistics
    (``VecMonitor``) are never touched.

    :param venv: the VecEnv, possibly wrapped
    :param index: env index
    :param snapshot: from :func:`capture_vec` (or :func:`capture`, which leaves the VecEnv wrappers as they are)
    :raises SnapshotError: when the wrappers differ from those the snapshot was taken with
    """
    _check_index(venv, index)
    wrappers, base = _vec_chain(venv)
    if snapshot.vec_layers is not None:
        names = [type(wrapper).__qualname__ for wrapper in wrappers]
        if names != [saved.layer for saved in snapshot.vec_layers]:
            raise SnapshotError(
                f"Cannot restore a snapshot of {snapshot.env_name}: the VecEnv wrappers differ (snapshot: "
                f"{[saved.layer for saved in snapshot.vec_layers]}; VecEnv: {names})."
            )
    if isinstance(base, DummyVecEnv):
        restore(base.envs[index], snapshot)
    else:
        _worker_call(base, "set_snapshot", [index], snapshot)
    if snapshot.vec_layers is not None:
        for wrapper, saved in zip(wrappers, snapshot.vec_layers, strict=True):
            _find_vec_adapter(wrapper).restore(wrapper, index, saved.state)


def capture_vec_frame_stack(venv: VecEnv, index: int) -> list[np.ndarray | dict[str, np.ndarray]]:
    """
    :param venv: the VecEnv, possibly wrapped
    :param index: env index
    :return: a copy of that env's stacked frames in each ``VecFrameStack`` of the chain (outermost first)
    """
    _check_index(venv, index)
    adapter = _VecFrameStackAdapter()
    return [adapter.capture(wrapper, index) for wrapper in _vec_chain(venv)[0] if isinstance(wrapper, VecFrameStack)]


def restore_vec_frame_stack(venv: VecEnv, index: int, stacks: list[np.ndarray | dict[str, np.ndarray]]) -> None:
    """
    :param venv: the VecEnv, possibly wrapped
    :param index: env index
    :param stacks: from :func:`capture_vec_frame_stack`
    """
    _check_index(venv, index)
    frame_stacks = [wrapper for wrapper in _vec_chain(venv)[0] if isinstance(wrapper, VecFrameStack)]
    if len(frame_stacks) != len(stacks):
        raise SnapshotError(f"{len(stacks)} frame stacks saved but the VecEnv has {len(frame_stacks)} VecFrameStack.")
    adapter = _VecFrameStackAdapter()
    for wrapper, state in zip(frame_stacks, stacks, strict=True):
        adapter.restore(wrapper, index, state)


@contextmanager
def _vec_monitor_paused(vec_monitor: VecMonitor) -> Iterator[None]:
    saved = vec_monitor.episode_returns.copy(), vec_monitor.episode_lengths.copy()
    vec_monitor.step_wait = vec_monitor.venv.step_wait  # type: ignore[method-assign]
    vec_monitor.reset = vec_monitor.venv.reset  # type: ignore[method-assign]
    try:
        yield
    finally:
        del vec_monitor.step_wait, vec_monitor.reset
        vec_monitor.episode_returns, vec_monitor.episode_lengths = saved


@contextmanager
def monitor_paused_vec(venv: VecEnv, indices: list[int] | None = None) -> Iterator[None]:
    """
    :func:`monitor_paused` for the envs of a VecEnv (in the workers for ``SubprocVecEnv``, which needs
    :class:`SnapshotWrapper`), and for every ``VecMonitor`` of the chain (which records all envs, so it is paused
    for all of them, whatever ``indices``).

    :param venv: the VecEnv, possibly wrapped
    :param indices: the envs whose Monitors are paused (default: all)
    """
    wrappers, base = _vec_chain(venv)
    indices = list(range(base.num_envs)) if indices is None else list(indices)
    with ExitStack() as stack:
        for wrapper in wrappers:
            if isinstance(wrapper, VecMonitor):
                stack.enter_context(_vec_monitor_paused(wrapper))
        if isinstance(base, DummyVecEnv):
            for index in indices:
                stack.enter_context(monitor_paused(base.envs[index]))
        else:
            _worker_call(base, "pause_monitors", indices)
            stack.callback(_worker_call, base, "resume_monitors", indices)
        yield
