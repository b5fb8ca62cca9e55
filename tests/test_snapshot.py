"""
Snapshots of simulator state (sb3_trpo_ext.vine.snapshot): restoring a snapshot and replaying the same actions
reproduces observations, rewards, terminations and truncations bit for bit.
"""

import pickle
import threading
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation
from stable_baselines3.common.atari_wrappers import AtariWrapper
from stable_baselines3.common.monitor import Monitor

from sb3_trpo_ext.vine import VineWorkerWrapper
from sb3_trpo_ext.vine.snapshot import (
    SnapshotError,
    capture,
    check_snapshottable,
    register_snapshot_adapter,
    restore,
    unregister_snapshot_adapter,
)

ale_py = pytest.importorskip("ale_py")
gym.register_envs(ale_py)

Record = tuple[Any, ...]


def _rollout(env: gym.Env, actions: list[Any]) -> list[Record]:
    """Step through ``actions``, resetting (without a seed: the env's np_random draws) after an episode ends."""
    records: list[Record] = []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        records.append(("step", obs, reward, terminated, truncated))
        if terminated or truncated:
            obs, _ = env.reset()
            records.append(("reset", obs))
    return records


def _assert_identical(expected: list[Record], actual: list[Record]) -> None:
    assert len(expected) == len(actual)
    for step, (want, got) in enumerate(zip(expected, actual, strict=True)):
        assert want[0] == got[0], f"step {step}"
        assert np.array_equal(np.asarray(want[1]), np.asarray(got[1])), f"observation differs at step {step}"
        if want[0] == "step":
            assert np.array_equal(np.float64(want[2]), np.float64(got[2])), f"reward differs at step {step}"
            assert want[3:] == got[3:], f"terminated/truncated differ at step {step}"


def _warm_up(env: gym.Env, seed: int, low: int = 5, high: int = 60) -> None:
    """Reset, then a random number of random actions (resetting when an episode ends)."""
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    for _ in range(int(rng.integers(low, high))):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()


def _fixed_actions(env: gym.Env, n: int, seed: int) -> list[Any]:
    space = env.action_space
    space.seed(seed + 1)
    return [space.sample() for _ in range(n)]


def _check_replay(make_env: Callable[[], gym.Env], n_replay: int, seed: int = 0, other_instance: bool = True) -> list[Record]:
    """
    Capture after a random warm-up, replay fixed actions, restore, replay again (twice), and restore into a fresh
    instance of the env: every replay must be identical.
    """
    env = make_env()
    _warm_up(env, seed)
    snapshot = pickle.loads(pickle.dumps(capture(env)))  # it must cross process boundaries
    actions = _fixed_actions(env, n_replay, seed)
    expected = _rollout(env, actions)
    for _ in range(2):  # a snapshot can be restored any number of times
        restore(env, snapshot)
        _assert_identical(expected, _rollout(env, actions))
    if other_instance:
        other = make_env()
        other.reset(seed=seed + 100)
        restore(other, snapshot)
        _assert_identical(expected, _rollout(other, actions))
        other.close()
    env.close()
    return expected


def _n_episode_ends(records: list[Record]) -> int:
    return sum(1 for record in records if record[0] == "reset")


# --------------------------------------------------------------------------------------------------- single envs


@pytest.mark.parametrize(
    "env_id, n_replay",
    [
        ("Hopper-v5", 60),
        ("Walker2d-v5", 60),
        ("Swimmer-v5", 60),
        ("Ant-v5", 30),  # observations include derived quantities (cfrc_ext): needs the saved derived arrays
        ("CartPole-v1", 60),
        ("Pendulum-v1", 60),
        ("Acrobot-v1", 40),
        ("MountainCar-v0", 40),
        ("MountainCarContinuous-v0", 40),
    ],
)
def test_replay_is_bit_exact(env_id: str, n_replay: int) -> None:
    records = _check_replay(lambda: Monitor(gym.make(env_id)), n_replay, seed=3)
    if env_id in ("Hopper-v5", "Walker2d-v5", "CartPole-v1"):
        assert _n_episode_ends(records) > 0, "the replay should include a termination and a reset"


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Hopper-v5", "CartPole-v1"])
def test_time_limit_truncation_within_replay(env_id: str) -> None:
    max_steps = 12
    records = _check_replay(lambda: gym.make(env_id, max_episode_steps=max_steps), 3 * max_steps, seed=1)
    assert any(record[0] == "step" and record[4] for record in records), "a truncation should happen in the replay"


def test_pong_v5_sticky_actions() -> None:
    # v5: frameskip 4 and sticky actions (0.25): the ALE RNG must be restored (cloneState(include_rng=True))
    _check_replay(lambda: Monitor(gym.make("ALE/Pong-v5")), 80, seed=2)


def test_pong_sb3_atari_wrapper() -> None:
    def make() -> gym.Env:
        env = gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0)
        env = AtariWrapper(Monitor(env), action_repeat_probability=0.25)  # StickyActionEnv, Noop, MaxAndSkip, Fire
        return FrameStackObservation(env, 4)

    _check_replay(make, 60, seed=4)


def test_pong_gymnasium_atari_preprocessing() -> None:
    def make() -> gym.Env:
        env = gym.make("ALE/Pong-v5", frameskip=1)
        return FrameStackObservation(AtariPreprocessing(env, terminal_on_life_loss=True), 4, padding_type="reset")

    _check_replay(make, 50, seed=5)


def test_breakout_episodic_life_across_life_loss() -> None:
    # EpisodicLifeEnv: a lost life ends the episode; reset() then only steps (was_real_done, lives)
    def make() -> gym.Env:
        return AtariWrapper(Monitor(gym.make("ALE/Breakout-v5", frameskip=1, repeat_action_probability=0.25)))

    records = _check_replay(make, 150, seed=6, other_instance=False)
    assert _n_episode_ends(records) > 0, "a life should be lost in the replay"


def test_non_live_capture_restores_consistently() -> None:
    # capture(live=False) skips the sticky-action priming on capture: restores still agree with each other
    make = lambda: gym.make("ALE/Breakout-v5", repeat_action_probability=0.25)  # noqa: E731
    env, other = make(), make()
    _warm_up(env, 7)
    other.reset(seed=0)
    snapshot = capture(env, live=False)
    actions = _fixed_actions(env, 40, seed=7)
    _rollout(env, actions)
    restore(env, snapshot)
    expected = _rollout(env, actions)
    restore(other, pickle.loads(pickle.dumps(snapshot)))
    _assert_identical(expected, _rollout(other, actions))


def test_atari_wrapper_states_round_trip() -> None:
    env = AtariWrapper(gym.make("ALE/Pong-v5", frameskip=1, repeat_action_probability=0.0), action_repeat_probability=0.5)
    _warm_up(env, 8, low=3, high=4)
    layers = {type(layer).__name__: layer for layer in _layers_of(env)}
    sticky, skip, life = layers["StickyActionEnv"], layers["MaxAndSkipEnv"], layers["EpisodicLifeEnv"]
    before = (sticky._sticky_action, skip._obs_buffer.copy(), life.lives, life.was_real_done)
    snapshot = capture(env)
    sticky._sticky_action = 5 if before[0] != 5 else 4
    skip._obs_buffer[...] = 7
    life.lives, life.was_real_done = 99, not before[3]
    restore(env, snapshot)
    after = (sticky._sticky_action, skip._obs_buffer, life.lives, life.was_real_done)
    assert after[0] == before[0] and np.array_equal(after[1], before[1]) and after[2:] == before[2:]


def test_vine_worker_wrapper_is_a_builtin_stateless_layer() -> None:
    # the 0.1.0 pass-through wrapper is in the built-in adapter list: no registration is needed
    make = lambda: VineWorkerWrapper(Monitor(gym.make("CartPole-v1")))  # noqa: E731
    _check_replay(make, 40, seed=0)
    env = make()
    env.reset(seed=0)
    assert capture(env).layers[0].adapter == "stateless"


def _layers_of(env: gym.Env) -> list[gym.Env]:
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


# ------------------------------------------------------------------------------------------------------ Monitor


def test_restore_never_rewinds_finished_episode_statistics() -> None:
    env = Monitor(gym.make("CartPole-v1"))
    env.reset(seed=0)
    for action in [0, 1] * 3:
        env.step(action)
    snapshot = capture(env)
    for action in _fixed_actions(env, 100, seed=0):  # unpaused: these episodes are recorded
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    returns, lengths, total = list(env.get_episode_rewards()), list(env.get_episode_lengths()), env.get_total_steps()
    assert returns
    restore(env, snapshot)
    assert env.get_episode_rewards() == returns and env.get_episode_lengths() == lengths
    assert env.get_total_steps() == total
    assert env.rewards == [1.0] * 6 and not env.needs_reset  # the episode in progress is rewound


# ----------------------------------------------------------------------------------------- errors and user adapters


class LockedEnv(gym.Env):
    """A custom env whose state holds a lock (cannot be copied nor pickled)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float64)
    action_space = gym.spaces.Discrete(2)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.position = 0.0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position = float(self.np_random.normal())
        return np.array([self.position]), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        with self.lock:
            self.position += (1.0 if action else -1.0) + 0.1 * float(self.np_random.normal())
        return np.array([self.position]), -abs(self.position), abs(self.position) > 5, False, {}


class _NoLock:
    """Picklable stand-in for a lock."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, *args: Any) -> None:
        pass


def test_unsnapshottable_env_raises_with_its_name() -> None:
    env_id = "SnapshotTestLocked-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=LockedEnv, max_episode_steps=50)
    env = gym.make(env_id)
    env.reset(seed=0)
    with pytest.raises(SnapshotError, match=env_id) as error:
        check_snapshottable(env)
    message = str(error.value)
    assert "LockedEnv" in message and "register_snapshot_adapter" in message and "lock" in message
    assert isinstance(error.value, ValueError)
    with pytest.raises(SnapshotError):
        capture(env)


def test_unpicklable_state_is_reported() -> None:
    class LocalClassEnv(LockedEnv):  # deep-copies, but a local class does not pickle
        def __init__(self) -> None:
            self.position = 0.0
            self.lock = _local_instance()

    env = LocalClassEnv()
    capture(env)
    with pytest.raises(SnapshotError, match="LocalClassEnv.*does not pickle"):
        check_snapshottable(env)


def _local_instance() -> Any:
    class Local:
        pass

    return Local()


def test_generic_fallback_for_a_plain_env() -> None:
    class PlainEnv(LockedEnv):
        def __init__(self) -> None:
            self.position = 0.0
            self.lock = _NoLock()

    check_snapshottable(PlainEnv())
    _check_replay(lambda: gym.wrappers.TimeLimit(PlainEnv(), 20), 40, seed=0)


class LockedEnvAdapter:
    name = "locked_env"

    def __init__(self) -> None:
        self.calls = 0

    def matches(self, env_layer: gym.Env) -> bool:
        return isinstance(env_layer, LockedEnv)

    def capture(self, env_layer: LockedEnv) -> tuple[float, dict]:
        self.calls += 1
        return env_layer.position, env_layer.np_random.bit_generator.state

    def restore(self, env_layer: LockedEnv, state: tuple[float, dict]) -> None:
        env_layer.position, env_layer.np_random.bit_generator.state = state


def test_user_registered_adapter() -> None:
    adapter = register_snapshot_adapter(LockedEnvAdapter())
    try:
        env = gym.wrappers.TimeLimit(LockedEnv(), 30)
        check_snapshottable(env)
        assert capture(env).layers[-1].adapter == "locked_env"
        _check_replay(lambda: gym.wrappers.TimeLimit(LockedEnv(), 30), 50, seed=0)
        assert adapter.calls > 0
    finally:
        unregister_snapshot_adapter(adapter)
    with pytest.raises(SnapshotError):
        capture(LockedEnv())


def test_user_adapter_takes_precedence_over_builtin() -> None:
    class CartPoleAdapter:
        name = "my_cartpole"

        def matches(self, env_layer: gym.Env) -> bool:
            return type(env_layer).__name__ == "CartPoleEnv"

        def capture(self, env_layer: gym.Env) -> Any:
            return env_layer.state.copy(), env_layer.steps_beyond_terminated, env_layer.np_random.bit_generator.state

        def restore(self, env_layer: gym.Env, state: Any) -> None:
            env_layer.state, env_layer.steps_beyond_terminated, env_layer.np_random.bit_generator.state = state
            env_layer.state = env_layer.state.copy()

    adapter = register_snapshot_adapter(CartPoleAdapter)
    try:
        env = gym.make("CartPole-v1")
        env.reset(seed=0)
        snapshot = capture(env)
        assert snapshot.layers[-1].adapter == "my_cartpole"
        _check_replay(lambda: gym.make("CartPole-v1"), 40)
    finally:
        unregister_snapshot_adapter(adapter)
    # restoring with another adapter registered than at capture time is refused
    with pytest.raises(SnapshotError, match="my_cartpole"):
        restore(env, snapshot)


def test_restore_into_a_different_chain_fails() -> None:
    env = gym.make("CartPole-v1")
    env.reset(seed=0)
    snapshot = capture(env)
    with pytest.raises(SnapshotError, match="wrapper chains differ"):
        restore(Monitor(gym.make("CartPole-v1")), snapshot)
    with pytest.raises(SnapshotError, match="wrapper chains differ"):
        restore(gym.make("Pendulum-v1"), snapshot)


def test_snapshot_does_not_alias_env_state() -> None:
    env = gym.make("Hopper-v5")
    env.reset(seed=0)
    snapshot = capture(env)
    blob = pickle.dumps(snapshot)
    for _ in range(5):
        env.step(env.action_space.sample())
    assert pickle.dumps(snapshot) == blob
    restore(env, snapshot)
    env.step(env.action_space.sample())
    assert pickle.dumps(snapshot) == blob


def test_snapshot_is_small() -> None:
    env = gym.make("Hopper-v5")
    env.reset(seed=0)
    assert len(pickle.dumps(capture(env))) < 20_000


# --------------------------------------------------------------------------------------------------- replaying a step


class GlobalRandomEnv(gym.Env):
    """A custom env whose step draws from NumPy's global generator, which no snapshot holds."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, use_np_random: bool = False) -> None:
        self.use_np_random = use_np_random
        self.position = np.zeros(2)
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.position = np.zeros(2)
        return self.position.copy(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        generator = self.np_random if self.use_np_random else np.random
        self.steps += 1
        self.position = self.position + action + generator.normal(size=2)
        return self.position.copy(), float(-np.abs(self.position).sum()), False, False, {}


def test_check_snapshottable_warns_when_a_step_replayed_from_a_snapshot_differs() -> None:
    # such an env passed the check, and the vine ran with its common random numbers silently broken
    env = gym.wrappers.TimeLimit(GlobalRandomEnv(), 50)
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="replayed from a snapshot .* gave a different observation, reward") as record:
        check_snapshottable(env)
    message = str(record[0].message)
    assert "GlobalRandomEnv" in message and "np.random" in message and "self.np_random" in message
    assert record[0].filename == __file__  # at the user's call
    assert env.unwrapped.steps == 0 and env._elapsed_steps == 0  # the replay ran on a copy  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "make_env",
    [
        lambda: gym.wrappers.TimeLimit(GlobalRandomEnv(use_np_random=True), 50),
        lambda: Monitor(gym.make("CartPole-v1")),
        lambda: gym.make("Hopper-v5"),
    ],
    ids=["np_random", "CartPole-v1", "Hopper-v5"],
)
def test_check_snapshottable_does_not_warn_for_an_env_whose_steps_replay(make_env: Callable[[], gym.Env]) -> None:
    env = make_env()
    env.reset(seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_snapshottable(env)
    env.close()


def test_check_snapshottable_replays_on_a_copy_of_a_never_reset_env_and_leaves_it_alone(tmp_path: Any) -> None:
    env = Monitor(gym.wrappers.TimeLimit(GlobalRandomEnv(), 50), filename=str(tmp_path / "run"))
    with pytest.warns(UserWarning, match="gave a different"):
        check_snapshottable(env)
    assert env.get_total_steps() == 0 and env.unwrapped.steps == 0  # type: ignore[attr-defined]
    env.close()


def test_check_snapshottable_can_skip_the_replay() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_snapshottable(GlobalRandomEnv(), replay=False)
