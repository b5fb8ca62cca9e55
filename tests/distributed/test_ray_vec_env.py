"""RayVecEnv against DummyVecEnv: the same trajectories, wrappers stacked on top, and the rest of the VecEnv API."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
import pytest

ray = pytest.importorskip("ray")

import _envs  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.vec_env import (  # noqa: E402
    DummyVecEnv,
    VecEnv,
    VecFrameStack,
    VecMonitor,
    VecNormalize,
    VecTransposeImage,
)

from sb3_trpo_ext.distributed import RayVecEnv  # noqa: E402

cloudpickle.register_pickle_by_value(_envs)  # Ray's workers cannot import tests/distributed/_envs.py

pytestmark = [pytest.mark.usefixtures("local_ray"), pytest.mark.timeout(180)]

CPU = {"num_cpus_per_actor": 0.25}
"""A quarter CPU per actor: the module's envs (up to 6 actors at once) fit the 2 CPUs of the local Ray."""


def assert_same_obs(actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            np.testing.assert_array_equal(actual[key], expected[key], err_msg=f"{where}, key {key}")
            assert np.asarray(actual[key]).dtype == np.asarray(expected[key]).dtype, where
    elif isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_obs(a, e, f"{where}, item {index}")
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=where)
        assert np.asarray(actual).dtype == np.asarray(expected).dtype, where


def assert_same_infos(actual: list[dict], expected: list[dict], where: str) -> None:
    assert len(actual) == len(expected), where
    for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert sorted(a) == sorted(e), f"{where}, env {index}"
        for key, value in e.items():
            if key == "terminal_observation":
                assert_same_obs(a[key], value, f"{where}, env {index} terminal_observation")
            elif key == "episode":
                assert (a[key]["r"], a[key]["l"]) == (value["r"], value["l"]), f"{where}, env {index}"
            else:
                assert a[key] == value, f"{where}, env {index}, {key}"


def compare_runs(ours: VecEnv, reference: VecEnv, actions: Callable[[int], np.ndarray], n_steps: int) -> dict[str, int]:
    """Step both with the same actions; :return: counts of dones and truncations (to check the test saw them)"""
    ours.seed(0), reference.seed(0)
    assert_same_obs(ours.reset(), reference.reset(), "reset")
    counts = {"dones": 0, "truncated": 0}
    for step in range(n_steps):
        action = actions(step)
        obs, rewards, dones, infos = ours.step(action)
        ref_obs, ref_rewards, ref_dones, ref_infos = reference.step(action)
        where = f"step {step}"
        assert_same_obs(obs, ref_obs, where)
        np.testing.assert_array_equal(rewards, ref_rewards, err_msg=where)
        assert rewards.dtype == ref_rewards.dtype and dones.dtype == ref_dones.dtype
        np.testing.assert_array_equal(dones, ref_dones, err_msg=where)
        assert_same_infos(infos, ref_infos, where)
        counts["dones"] += int(dones.sum())
        counts["truncated"] += sum(bool(info.get("TimeLimit.truncated")) for info in infos)
    unwrapped = ours.unwrapped
    assert_same_infos(unwrapped.reset_infos, reference.unwrapped.reset_infos, "reset_infos")  # type: ignore[attr-defined]
    return counts


def discrete_actions(n_envs: int, n: int = 2) -> Callable[[int], np.ndarray]:
    rng = np.random.default_rng(1)
    return lambda _: rng.integers(0, n, size=n_envs)


@pytest.fixture(scope="module")
def cartpole() -> Iterator[RayVecEnv]:
    env = RayVecEnv("CartPole-v1", n_envs=4, envs_per_actor=2, seed=0, **CPU)
    yield env
    env.close()


@pytest.fixture(scope="module")
def dict_env() -> Iterator[RayVecEnv]:
    env = RayVecEnv(partial(_envs.ShapesEnv, "dict"), n_envs=4, envs_per_actor=2, seed=0, **CPU)
    yield env
    env.close()


def test_cartpole_same_trajectories_as_dummy(cartpole: RayVecEnv) -> None:
    assert len(cartpole.actors) == 2 and [(p.start, p.stop) for p in cartpole.places] == [(0, 2), (2, 4)]
    counts = compare_runs(cartpole, make_vec_env("CartPole-v1", n_envs=4, seed=0), discrete_actions(4), 200)
    assert counts["dones"] >= 8  # random actions end CartPole episodes after ~20 steps: auto-resets were compared


def test_pendulum_same_trajectories_as_dummy_and_close_twice() -> None:
    kwargs = {"max_episode_steps": 50}  # truncations (TimeLimit.truncated) within the 200 steps
    env = RayVecEnv("Pendulum-v1", n_envs=4, envs_per_actor=2, seed=0, env_kwargs=kwargs, **CPU)
    rng = np.random.default_rng(2)
    actions = lambda _: rng.uniform(-2.0, 2.0, size=(4, 1)).astype(np.float32)  # noqa: E731
    counts = compare_runs(env, make_vec_env("Pendulum-v1", n_envs=4, seed=0, env_kwargs=kwargs), actions, 200)
    assert counts["truncated"] == 16
    actors = list(env.actors)
    env.close()
    env.close()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actors[0].describe.remote(), timeout=30)
    with pytest.raises(RuntimeError, match="after close"):
        env.reset()


def test_dict_observations_same_as_dummy(dict_env: RayVecEnv) -> None:
    reference = make_vec_env(partial(_envs.ShapesEnv, "dict"), n_envs=4, seed=0)
    assert compare_runs(dict_env, reference, discrete_actions(4), 60)["dones"] > 10


def test_tuple_observations_from_a_list_of_env_fns() -> None:
    fns = [partial(_envs.ShapesEnv, "tuple") for _ in range(3)]
    env = RayVecEnv(fns, envs_per_actor=2, **CPU)  # 3 envs: actors of 2 and 1; a list gets no Monitor, as DummyVecEnv
    try:
        assert [(p.start, p.stop) for p in env.places] == [(0, 2), (2, 3)]
        assert env.env_is_wrapped(Monitor) == [False] * 3
        assert compare_runs(env, DummyVecEnv(fns), discrete_actions(3), 60)["dones"] > 10
    finally:
        env.close()


def test_image_env_transposed_and_rendered() -> None:
    make = partial(_envs.ShapesEnv, "image", render_mode="rgb_array")
    env = RayVecEnv(make, n_envs=4, envs_per_actor=2, seed=0, **CPU)
    try:
        ours, reference = VecTransposeImage(env), VecTransposeImage(make_vec_env(make, n_envs=4, seed=0))
        assert ours.observation_space.shape == (3, 12, 12)
        compare_runs(ours, reference, discrete_actions(4), 30)
        images = env.get_images()
        assert len(images) == 4 and all(image.shape == (8, 8, 3) for image in images)  # type: ignore[union-attr]
        np.testing.assert_array_equal(env.render(), reference.render())
        assert env.render().shape == (16, 16, 3)  # type: ignore[union-attr]
    finally:
        env.close()


def test_wrappers_on_top(cartpole: RayVecEnv) -> None:
    def stack(venv: VecEnv) -> VecEnv:
        return VecNormalize(VecFrameStack(VecMonitor(venv), n_stack=3), gamma=0.99)

    counts = compare_runs(stack(cartpole), stack(make_vec_env("CartPole-v1", n_envs=4, seed=0)), discrete_actions(4), 120)
    assert counts["dones"] > 4


def test_seed_and_options_used_at_the_next_reset_only(dict_env: RayVecEnv) -> None:
    reference = make_vec_env(partial(_envs.ShapesEnv, "dict"), n_envs=4)
    for venv in (dict_env, reference):
        venv.seed(7)
        venv.set_options([{"level": index} for index in range(4)])
    assert_same_obs(dict_env.reset(), reference.reset(), "seeded reset")
    assert [info["options"] for info in dict_env.reset_infos] == [{"level": index} for index in range(4)]
    assert dict_env._seeds == [None] * 4 and dict_env._options == [{}] * 4
    dict_env.reset()
    assert [info["options"] for info in dict_env.reset_infos] == [None] * 4


def attribute_calls(venv: VecEnv) -> list[Any]:
    """The same get_attr / set_attr / env_method sequence on any VecEnv; :return: what each call gave"""
    venv.set_attr("counter", 0)
    results: list[Any] = [venv.get_attr("counter")]
    venv.set_attr("counter", 5, indices=[1, 2])  # on the outer wrapper (Monitor), as DummyVecEnv does
    results.append(venv.get_attr("counter"))
    results.append(venv.env_method("add", 2, scale=3, indices=[3, 1]))  # the env's own counter, in the indices' order
    results.append(venv.env_method("add", 1, indices=2))
    results.append(venv.get_attr("counter", indices=range(4)))
    results.append(venv.env_method("get_wrapper_attr", "counter"))
    return results


def test_env_method_get_set_attr_and_is_wrapped(dict_env: RayVecEnv) -> None:
    reference = make_vec_env(partial(_envs.ShapesEnv, "dict"), n_envs=4)
    results = attribute_calls(dict_env)
    assert results == attribute_calls(reference)
    assert results[:3] == [[0, 0, 0, 0], [0, 5, 5, 0], [6, 6]]
    assert dict_env.env_is_wrapped(Monitor) == [True] * 4
    assert dict_env.env_is_wrapped(gym.wrappers.TimeLimit, indices=[0]) == [False]
    assert dict_env.has_attr("counter") and not dict_env.has_attr("no_such_attribute")
    with pytest.raises(AttributeError):
        dict_env.get_attr("no_such_attribute")
    assert dict_env.render_mode is None and dict_env.get_images() == [None] * 4


def test_bad_arguments_are_explained() -> None:
    with pytest.raises(ValueError, match="n_envs"):
        RayVecEnv("CartPole-v1")
    with pytest.raises(ValueError, match="envs_per_actor"):
        RayVecEnv("CartPole-v1", n_envs=2, envs_per_actor=0)
    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot be pickled"):
        RayVecEnv(lambda: (lock, gym.make("CartPole-v1"))[1], n_envs=1)
    with pytest.raises(ValueError, match="scheduling"):
        RayVecEnv("CartPole-v1", n_envs=1, scheduling="everywhere")


def test_env_that_fails_to_build_leaves_nothing_behind() -> None:
    free = ray.available_resources().get("CPU", 0)
    with pytest.raises(RuntimeError, match="Building the envs"):
        RayVecEnv("NoSuchEnv-v0", n_envs=1, startup_timeout_s=300, **CPU)
    deadline = 30
    while ray.available_resources().get("CPU", 0) < free and deadline > 0:  # the placement group is removed
        ray.get(ray.remote(lambda: None).options(num_cpus=0).remote())
        deadline -= 1
    assert ray.available_resources().get("CPU", 0) >= free
