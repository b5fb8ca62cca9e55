"""
Snapshots of a simulator's full state, for the vine method (paper, Section 5.2), which resets the simulator to
arbitrary saved states.

A :class:`Snapshot` holds the state of every layer of a (wrapped) gymnasium env: ``env``, ``env.env``, ... down to
``env.unwrapped``. Each layer's state is taken by the first *adapter* that matches it: the adapters registered by the
user, then the built-in ones (listed, in matching order, in :mod:`sb3_trpo_ext.vine.snapshot.core`). Snapshots are
plain picklable data, so they cross process boundaries and can be restored into another instance of the same env
(same wrapper chain, same model)::

    snapshot = capture(env)         # live=False when the env will be restored before its next step
    restore(env, snapshot)          # any number of times; the snapshot is never modified
    check_snapshottable(env)        # raises SnapshotError (a ValueError) naming the layer, with the fix; warns
                                    # when a step replayed from a snapshot differs (e.g. the env uses np.random)

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
  ``AtariWrapper``, ``WarpFrame``, ``ClipRewardEnv``, ``FireResetEnv``, ``NoopResetEnv``, ``VineWorkerWrapper``,
  the ``Transform*``, ``Clip*``, ``Rescale*`` and shape/dtype observation wrappers), which are matched by exact
  class.
- SB3 ``Monitor`` and gymnasium ``RecordEpisodeStatistics``: only the *current episode's accumulators*
  (Monitor: ``rewards``, ``needs_reset``, ``current_reset_info``; RecordEpisodeStatistics: ``episode_returns``,
  ``episode_lengths``, ``episode_start_time``). ``restore`` never touches the finished-episode statistics
  (Monitor's ``episode_returns``, ``episode_lengths``, ``episode_times``, ``total_steps``, its results file;
  RecordEpisodeStatistics' queues and ``episode_count``): a restore rewinds the episode in progress, not the
  history of finished ones.
- Fallbacks: any other wrapper, and an unwrapped env no adapter matches, are deep-copied (their ``__dict__`` minus
  spaces, spec, functions, render objects such as pygame screens or MuJoCo renderers, and objects whose class sets
  ``is_simulator_state = False``; a restore also drops state attributes created after the capture). When that
  fails (a lock, a socket, a C handle in the state) a :class:`SnapshotError` names the layer and says how to fix it.

The stateful built-in adapters also match subclasses (``isinstance``): state that a subclass adds (e.g. a MuJoCo
env keeping per-episode counters in attributes) is not captured; register an adapter for such a class. ``restore``
does not return an observation (keep the one that came with the state) and does not redraw the render buffers.

Registering an adapter for your own env (or wrapper)::

    import numpy as np
    from sb3_trpo_ext.vine.snapshot import register_snapshot_adapter

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

from sb3_trpo_ext.vine.snapshot.adapters import AtariSnapshotAdapter, MujocoSnapshotAdapter
from sb3_trpo_ext.vine.snapshot.base import LayerState, Snapshot, SnapshotAdapter, SnapshotError, capture_is_live
from sb3_trpo_ext.vine.snapshot.check import check_snapshottable
from sb3_trpo_ext.vine.snapshot.core import capture, register_snapshot_adapter, restore, unregister_snapshot_adapter

__all__ = [
    "AtariSnapshotAdapter",
    "LayerState",
    "MujocoSnapshotAdapter",
    "Snapshot",
    "SnapshotAdapter",
    "SnapshotError",
    "capture",
    "capture_is_live",
    "check_snapshottable",
    "register_snapshot_adapter",
    "restore",
    "unregister_snapshot_adapter",
]
