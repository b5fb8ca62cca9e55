"""
Snapshots of a simulator's full state, for the vine method (paper, Section 5.2), which resets the simulator to
arbitrary saved states.

A :class:`Snapshot` holds the state of every layer of a (wrapped) gymnasium env: ``env``, ``env.env``, ... down to
``env.unwrapped``. Each layer's state is taken by the first *adapter* that matches it; adapters registered by the
user come first, then the built-in ones, then a generic deep-copy fallback. Snapshots are plain picklable data, so
they cross process boundaries (``SubprocVecEnv`` workers) and can be restored into another instance of the same env
(same wrapper chain, same model).

Public API::

    snapshot = capture(env)                  # the whole wrapper chain (live=False: restored before any step)
    restore(env, snapshot)                   # any number of times; the snapshot is never modified
    with monitor_paused(env):                # branch rollouts that leave no trace in Monitor statistics
        restore(env, snapshot)
        env.step(action)
    check_snapshottable(env)                 # raises SnapshotError (a ValueError) with the fix
    snapshot = capture_vec(venv, index)      # one env of a DummyVecEnv / SubprocVecEnv, with VecEnv wrapper state
    restore_vec(venv, index, snapshot)

Built-in adapters (what is captured):

- MuJoCo (``gymnasium.envs.mujoco.MujocoEnv``, v4 and v5): MuJoCo's *integration state*
  (``mj_getState(..., mjSTATE_INTEGRATION)``: qpos, qvel, act, warm-start accelerations, time, controls, applied
  forces, mocap, userdata), which makes every later ``mj_step`` bit-identical, plus the derived quantities that
  environments read between steps (body/site/geom poses, ``cinert``, ``cvel``, ``cfrc_ext``, ``qfrc_actuator``,
  sensors, ...). Gymnasium envs read these *after* ``mj_step``, when they still describe the state at the start of
  the last substep; recomputing them with ``mj_forward`` would give different (fresher) numbers, so Ant's and
  Humanoid's observations would not be reproduced bit for bit. ``restore`` therefore runs ``mj_forward`` (so that
  contacts and every other derived array match the restored state) and then writes the saved derived arrays back.
  Plus the env's ``np_random`` (used by ``reset``).
- ALE (``ale_py.env.AtariEnv``): ``ale.cloneState(include_rng=True)`` (the emulator and the sticky-action RNG;
  ``ALEState`` pickles) and the env's ``np_random`` (reset seeding, random frame skips). ALE's sticky actions also
  remember the last executed action, which ``ALEState`` does not hold: with ``repeat_action_probability > 0`` (the
  v5 default) capture and restore reset it to NOOP by priming a few emulator frames, so that restores are exact
  (see :class:`AtariSnapshotAdapter`; with ``repeat_action_probability=0`` nothing of the kind is needed).
- Classic control: CartPole (``state``, ``steps_beyond_terminated``), Pendulum (``state``, ``last_u``), Acrobot,
  MountainCar and MountainCarContinuous (``state``), each with ``np_random``.
- Wrappers: ``TimeLimit`` (``_elapsed_steps``), ``OrderEnforcing`` (``_has_reset``), SB3's ``EpisodicLifeEnv``
  (``lives``, ``was_real_done``), ``MaxAndSkipEnv`` (max-pooling buffer), ``StickyActionEnv`` (last action; its
  RNG and ``NoopResetEnv``'s are the unwrapped env's ``np_random``), gymnasium's ``FrameStackObservation`` (frame
  queue) and ``AtariPreprocessing`` (frame buffers, lives), and the stateless wrappers (``PassiveEnvChecker``,
  ``AtariWrapper``, ``WarpFrame``, ``ClipRewardEnv``, ``FireResetEnv``, ``NoopResetEnv``, the ``Transform*``,
  ``Clip*``, ``Rescale*`` and shape/dtype observation wrappers), which are matched by exact class.
- SB3 ``Monitor`` and gymnasium ``RecordEpisodeStatistics``: only the *current episode's accumulators*
  (Monitor: ``rewards``, ``needs_reset``, ``current_reset_info``; RecordEpisodeStatistics: ``episode_returns``,
  ``episode_lengths``, ``episode_start_time``). ``restore`` never touches the finished-episode statistics
  (Monitor's ``episode_returns``, ``episode_lengths``, ``episode_times``, ``total_steps``, its results file;
  RecordEpisodeStatistics' queues and ``episode_count``): a restore rewinds the episode in progress, not the
  history of finished ones.
- Fallbacks: any other wrapper, and an unwrapped env no adapter matches, are deep-copied (their ``__dict__`` minus
  spaces, spec, functions and render objects such as pygame screens or MuJoCo renderers; a restore also drops state
  attributes created after the capture). When that fails (a lock, a socket, a C handle in the state) a
  :class:`SnapshotError` names the layer and says how to fix it.

The stateful built-in adapters also match subclasses (``isinstance``): state that a subclass adds (e.g. a MuJoCo
env keeping per-episode counters in attributes) is not captured; register an adapter for such a class. ``restore``
does not return an observation (keep the one that came with the state) and does not redraw the render buffers.

Branch rollouts and Monitor: stepping a restored env through ``Monitor`` would record the branch's episodes (and
write them to the results file). Step branches inside :func:`monitor_paused`: while it is active, the ``step`` and
``reset`` of every ``Monitor`` / ``RecordEpisodeStatistics`` layer go straight to the wrapped env (no bookkeeping,
no ``info["episode"]``, no file write), and on exit their accumulators are put back as they were on entry. The
usual pattern is capture the trunk's state, run the branches paused, restore the trunk's state and go on.

VecEnvs: :func:`capture_vec` / :func:`restore_vec` snapshot one env of a ``DummyVecEnv`` (directly) or of a
``SubprocVecEnv`` (through ``env_method``; the worker's env must be wrapped, outermost, in :class:`SnapshotWrapper`,
e.g. ``make_vec_env(env_id, n_envs, vec_env_cls=SubprocVecEnv, wrapper_class=SnapshotWrapper)``). They also take
the per-env state of the VecEnv wrappers: ``VecFrameStack``'s stacked frames (also available alone through
:func:`capture_vec_frame_stack` / :func:`restore_vec_frame_stack`), ``VecNormalize``'s discounted-return
accumulator and ``VecMonitor``'s episode accumulators (again, never its finished-episode statistics).
``VecNormalize``'s running statistics are never captured nor restored: freeze them during branch rollouts
(``venv.training = False``, then set it back) so branches do not update them. :func:`monitor_paused_vec` pauses the
Monitors of the workers and any ``VecMonitor``.

Registering an adapter for your own env (or wrapper)::

    import numpy as np
    from sb3_trpo_ext.common.snapshot import register_snapshot_adapter

    class MyRobotAdapter:
        name = "my_robot"  # optional; recorded in snapshots and checked on restore

        def matches(self, env_layer) -> bool:
            return isinstance(env_layer, MyRobotEnv)

        def capture(self, env_layer):
            # return picklable data that does not alias the env's mutable state
            return env_layer.sim.get_state().copy(), env_layer.np_random.bit_generator.state

        def restore(self, env_layer, state) -> None:
            sim_state, rng_state = state
            env_layer.sim.set_state(sim_state.copy())  # copy: the same snapshot may be restored many times
            env_layer.np_random.bit_generator.state = rng_state

    register_snapshot_adapter(MyRobotAdapter())

User adapters are tried before the built-in ones, the most recently registered first. The configurable built-in
adapters are public, so that a configured instance can be registered the same way, e.g.
``register_snapshot_adapter(AtariSnapshotAdapter(sticky_priming_frames=0))`` or
``register_snapshot_adapter(MujocoSnapshotAdapter(forward=False))``. With ``SubprocVecEnv`` and
the ``spawn`` / ``forkserver`` start methods, register the adapter at import time of a module the workers import
(e.g. the module that defines the env), so that it is registered in the workers too.
"""

from __future__ import annotations

from sb3_trpo_ext.common.snapshot.core import (
    _BUILTIN_ADAPTERS,
    LayerState,
    Snapshot,
    SnapshotAdapter,
    SnapshotError,
    VecSnapshotAdapter,
    capture,
    capture_is_live,
    register_snapshot_adapter,
    restore,
    unregister_snapshot_adapter,
)
from sb3_trpo_ext.common.snapshot.fallback import _GenericEnvAdapter, _GenericWrapperAdapter
from sb3_trpo_ext.common.snapshot.monitor import monitor_paused
from sb3_trpo_ext.common.snapshot.simulators import _CLASSIC_CONTROL_ADAPTERS, AtariSnapshotAdapter, MujocoSnapshotAdapter
from sb3_trpo_ext.common.snapshot.vec import (
    SnapshotWrapper,
    capture_vec,
    capture_vec_frame_stack,
    check_snapshottable,
    monitor_paused_vec,
    register_vec_snapshot_adapter,
    restore_vec,
    restore_vec_frame_stack,
    unregister_vec_snapshot_adapter,
)
from sb3_trpo_ext.common.snapshot.wrappers import (
    _AtariPreprocessingAdapter,
    _EpisodicLifeAdapter,
    _FrameStackObservationAdapter,
    _MaxAndSkipAdapter,
    _MonitorAdapter,
    _OrderEnforcingAdapter,
    _RecordEpisodeStatisticsAdapter,
    _StatelessWrapperAdapter,
    _StickyActionAdapter,
    _TimeLimitAdapter,
)

__all__ = [
    "AtariSnapshotAdapter",
    "MujocoSnapshotAdapter",
    "LayerState",
    "Snapshot",
    "SnapshotAdapter",
    "SnapshotError",
    "SnapshotWrapper",
    "VecSnapshotAdapter",
    "capture",
    "capture_is_live",
    "capture_vec",
    "capture_vec_frame_stack",
    "check_snapshottable",
    "monitor_paused",
    "monitor_paused_vec",
    "register_snapshot_adapter",
    "register_vec_snapshot_adapter",
    "restore",
    "restore_vec",
    "restore_vec_frame_stack",
    "unregister_snapshot_adapter",
    "unregister_vec_snapshot_adapter",
]

# The built-in adapters, in matching order (tried after the user's; the first that matches a layer takes it).
_BUILTIN_ADAPTERS[:] = [
    _StatelessWrapperAdapter(),
    _TimeLimitAdapter(),
    _OrderEnforcingAdapter(),
    _MonitorAdapter(),
    _RecordEpisodeStatisticsAdapter(),
    _EpisodicLifeAdapter(),
    _MaxAndSkipAdapter(),
    _StickyActionAdapter(),
    _FrameStackObservationAdapter(),
    _AtariPreprocessingAdapter(),
    _GenericWrapperAdapter(),
    MujocoSnapshotAdapter(),
    AtariSnapshotAdapter(),
    *_CLASSIC_CONTROL_ADAPTERS,
    _GenericEnvAdapter(),
]
