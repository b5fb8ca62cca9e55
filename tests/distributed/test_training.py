"""Training on a RayVecEnv: SB3's PPO and A2C and our TRPO, callbacks, and a lost actor in the middle of a rollout."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import torch as th  # noqa: E402
from stable_baselines3 import A2C, PPO  # noqa: E402
from stable_baselines3.common.base_class import BaseAlgorithm  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402

from sb3_trpo_ext import TRPO  # noqa: E402
from sb3_trpo_ext.distributed import EnvWorkerLost, RayVecEnv  # noqa: E402

pytestmark = [pytest.mark.usefixtures("local_ray"), pytest.mark.timeout(180)]

CPU = {"num_cpus_per_actor": 0.25}
SETTINGS: dict[type, dict[str, Any]] = {
    PPO: dict(n_steps=32, batch_size=64, n_epochs=2),
    A2C: dict(n_steps=8),
    TRPO: dict(n_steps=32, batch_size=64, n_critic_updates=2),
}


def make_env() -> RayVecEnv:
    return RayVecEnv("CartPole-v1", n_envs=4, envs_per_actor=2, seed=0, **CPU)


def parameters(model: BaseAlgorithm) -> dict[str, th.Tensor]:
    return {name: value.detach().clone() for name, value in model.policy.state_dict().items()}


def assert_same_parameters(actual: dict[str, th.Tensor], expected: dict[str, th.Tensor]) -> None:
    assert list(actual) == list(expected)
    for name in expected:
        assert th.equal(actual[name], expected[name]), name


@pytest.fixture(scope="module")
def cartpole() -> Iterator[RayVecEnv]:
    env = make_env()
    yield env
    env.close()


class Recorder(BaseCallback):
    """Records, at every step, what the rollout hands the callback."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[dict[str, Any]] = []
        self.keys: set[str] = set()

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        assert isinstance(infos, list | tuple) and len(infos) == self.training_env.num_envs
        self.keys = set(self.locals)
        self.steps.append(
            dict(
                rewards=np.copy(self.locals["rewards"]),
                dones=np.copy(self.locals["dones"]),
                infos=[{k: v for k, v in info.items() if k != "terminal_observation"} for info in infos],
                terminal=[info.get("terminal_observation") for info in infos],
            )
        )
        return True


@pytest.mark.parametrize("algorithm", [PPO, A2C, TRPO], ids=lambda cls: cls.__name__)
def test_algorithms_train(cartpole: RayVecEnv, algorithm: type[BaseAlgorithm]) -> None:
    model = algorithm("MlpPolicy", cartpole, seed=0, **SETTINGS[algorithm])
    before = parameters(model)
    model.learn(256)
    assert model.num_timesteps >= 256
    assert len(model.ep_info_buffer) > 0  # the Monitor's episode infos reached the model
    assert any(not th.equal(value, before[name]) for name, value in parameters(model).items())


@pytest.mark.parametrize("algorithm", [PPO, TRPO], ids=lambda cls: cls.__name__)
def test_callbacks_see_what_they_see_on_dummy(cartpole: RayVecEnv, algorithm: type[BaseAlgorithm]) -> None:
    runs = []
    for env in (cartpole, make_vec_env("CartPole-v1", n_envs=4, seed=0)):
        recorder = Recorder()
        model = algorithm("MlpPolicy", env, seed=0, **SETTINGS[algorithm])
        model.learn(256, callback=recorder)
        runs.append((recorder, parameters(model)))
    (ours, our_params), (reference, reference_params) = runs
    assert ours.keys == reference.keys and "infos" in ours.keys
    assert len(ours.steps) == len(reference.steps) == 256 // 4
    for step, (a, e) in enumerate(zip(ours.steps, reference.steps, strict=True)):
        np.testing.assert_array_equal(a["rewards"], e["rewards"], err_msg=f"step {step}")
        np.testing.assert_array_equal(a["dones"], e["dones"], err_msg=f"step {step}")
        for ai, ei in zip(a["infos"], e["infos"], strict=True):
            assert sorted(ai) == sorted(ei)
            assert ai.get("episode", {}).get("r") == ei.get("episode", {}).get("r")
        for at, et in zip(a["terminal"], e["terminal"], strict=True):
            assert (at is None) == (et is None) and (at is None or np.array_equal(at, et))
    assert sum(int(step["dones"].sum()) for step in ours.steps) > 4
    assert_same_parameters(our_params, reference_params)  # same data, same updates


class KillDuringRollout(BaseCallback):
    """
    Keeps the policy's parameters at the start of each rollout (= after the last completed update), and kills
    actor 1 of ``env`` at step ``step`` of rollout ``rollout``.
    """

    def __init__(self, env: RayVecEnv, rollout: int, step: int) -> None:
        super().__init__()
        self.env, self.rollout, self.step = env, rollout, step
        self.snapshots: list[dict[str, th.Tensor]] = []
        self.step_in_rollout = 0

    def _on_rollout_start(self) -> None:
        self.snapshots.append(parameters(self.model))
        self.step_in_rollout = 0

    def _on_step(self) -> bool:
        self.step_in_rollout += 1
        if len(self.snapshots) == self.rollout and self.step_in_rollout == self.step:
            kill_and_wait(self.env.actors[1])
        return True


def kill_and_wait(actor: Any) -> None:
    """Kills ``actor`` and returns once it is gone (``ray.kill`` is asynchronous: a step sent just after it may still
    be served, which would move the step at which the loss is seen)."""
    ray.kill(actor)
    for _ in range(200):
        try:
            ray.get(actor.describe.remote(), timeout=5)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return
        time.sleep(0.05)
    raise AssertionError("the killed actor still answers after 10 s")


def test_lost_actor_during_trpo_learn_keeps_the_last_update(tmp_path: Path) -> None:
    env = make_env()
    model = TRPO("MlpPolicy", env, seed=0, **SETTINGS[TRPO])
    killer = KillDuringRollout(env, rollout=3, step=5)
    try:
        with pytest.raises(EnvWorkerLost) as caught:
            model.learn(10_000, callback=killer)
        with pytest.raises(EnvWorkerLost):
            env.step(np.zeros(4, dtype=np.int64))  # the broken env keeps saying so
    finally:
        env.close()
    error = caught.value
    assert isinstance(error, RuntimeError) and error.env_indices == [2, 3]
    message = str(error)
    for needed in ("envs 2-3", "actor 1", env.places[1].node_id, "model.save(", "set_env(", "reset_num_timesteps=False"):
        assert needed in message, needed
    assert len(killer.snapshots) == 3 and model.num_timesteps == 2 * 32 * 4 + 5 * 4
    assert_same_parameters(parameters(model), killer.snapshots[-1])  # exactly the parameters of the last update
    assert any(not th.equal(value, killer.snapshots[1][name]) for name, value in killer.snapshots[-1].items())

    model.save(tmp_path / "model")
    assert_same_parameters(parameters(TRPO.load(tmp_path / "model")), killer.snapshots[-1])
    fresh = make_env()
    try:
        model.set_env(fresh)
        done_before = model.num_timesteps
        model.learn(128, reset_num_timesteps=False)
        assert model.num_timesteps >= done_before + 128
        assert any(not th.equal(value, killer.snapshots[-1][name]) for name, value in parameters(model).items())
    finally:
        fresh.close()
