"""
The vine's branches on a RayBranchPool: the same Q-values as in process, the wave through the object store once, an
actor killed during a wave replaced with the same result, the error once the retries are used up, the wrapper-chain
check, and a RayVecEnv trunk.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import torch as th  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.logger import KVWriter, Logger  # noqa: E402

from sb3_trpo_ext import VineTRPO  # noqa: E402
from sb3_trpo_ext.distributed import BranchWorkerLost, EnvWorkerLost, RayBranchPool, RayVecEnv  # noqa: E402
from sb3_trpo_ext.distributed.branch_actor import join_wave, split_wave  # noqa: E402
from sb3_trpo_ext.vine.snapshot import SnapshotError  # noqa: E402

pytestmark = [pytest.mark.usefixtures("local_ray"), pytest.mark.timeout(180)]

# 64 trunk steps x 2 envs, 8 states x 2 actions x 5 steps; 4 clones per actor: 2 waves of 8 branches per iteration
SETTINGS: dict[str, Any] = dict(
    n_steps=64, batch_size=64, n_critic_updates=1, n_rollout_states=8, n_actions_per_state=2, rollout_length=5,
    branch_envs_per_worker=4, seed=0,
)  # fmt: skip
# without the critic's bootstrap the Q-values are sums of rewards, the same bits however the branches are batched
# (the critic's float32 forward over one batch of a wave or over each actor's share rounds differently, by an ulp)
EXACT = dict(SETTINGS, bootstrap_branches=False)


class Rows(KVWriter):
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        self.rows.append(dict(key_values))


class RecordingPool(RayBranchPool):
    """Records what each wave sends: the shared object's reference per actor."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[int, Any]] = []

    def _submit(self, index: int, shared: Any, part: Any) -> Any:
        self.sent.append((index, shared))
        return super()._submit(index, shared, part)


class KillingPool(RayBranchPool):
    """Kills the actor of submission number ``kill_at`` (counted from 1) right after sending it its wave."""

    def __init__(self, *args: Any, kill_at: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kill_at, self.submissions, self.killed = kill_at, 0, []

    def _submit(self, index: int, shared: Any, part: Any) -> Any:
        reply = super()._submit(index, shared, part)
        self.submissions += 1
        if self.submissions == self.kill_at:
            self.killed.append((index, self.places[index].actor_id))
            ray.kill(self.actors[index])
        return reply


def cartpole_pool(cls: type[RayBranchPool] = RayBranchPool, **kwargs: Any) -> RayBranchPool:
    return cls("CartPole-v1", n_actors=2, num_cpus_per_actor=0.25, wave_timeout_s=60, **kwargs)


def learn(model: VineTRPO, iterations: int = 2) -> list[dict[str, Any]]:
    """Run exactly ``iterations`` iterations; :return: the logged rows"""
    writer = Rows()
    model.set_logger(Logger(folder=None, output_formats=[writer]))
    for i in range(iterations):
        model.learn(1, reset_num_timesteps=i == 0, log_interval=1)
    return writer.rows


def parameters(model: VineTRPO) -> dict[str, th.Tensor]:
    return {name: value.detach().clone() for name, value in model.policy.state_dict().items()}


def assert_same_run(model: VineTRPO, reference: VineTRPO) -> None:
    assert th.equal(model.vine_batch.q_values, reference.vine_batch.q_values)
    assert model.num_timesteps == reference.num_timesteps
    ours, theirs = parameters(model), parameters(reference)
    assert all(th.equal(ours[name], theirs[name]) for name in theirs)


@pytest.fixture(scope="module")
def pool(local_ray: None) -> Iterator[RecordingPool]:
    pool = cartpole_pool(RecordingPool)
    yield pool  # type: ignore[misc]
    pool.close()


@pytest.fixture(scope="module")
def in_process() -> VineTRPO:
    """The reference: two iterations with the branches in process (DummyVecEnv)."""
    model = VineTRPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), **EXACT)
    learn(model)
    return model


def test_q_values_and_learning_equal_the_in_process_runner(pool: RecordingPool, in_process: VineTRPO, tmp_path: Path) -> None:
    model = VineTRPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), branch_pool=pool, **EXACT)
    pool.sent.clear()
    rows = learn(model)
    assert_same_run(model, in_process)
    assert [row["rollout/branch_retries"] for row in rows] == [0, 0]
    # 2 iterations x 2 waves, each wave: one object-store reference handed to both actors
    assert [index for index, _ in pool.sent] == [0, 1] * 4
    refs = [ref for _, ref in pool.sent]
    assert all(isinstance(ref, ray.ObjectRef) for ref in refs)
    assert all(refs[i] == refs[i + 1] for i in range(0, 8, 2)) and len({ref.hex() for ref in refs}) == 4
    # a saved model keeps the pool's settings, not its actors
    model.save(tmp_path / "vine")
    copy = pickle.loads(pickle.dumps(pool))
    assert not copy.started and copy.settings == pool.settings


def test_actor_killed_during_a_wave_is_replaced_and_learning_gives_the_same_result(pool: RecordingPool) -> None:
    undisturbed = VineTRPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), branch_pool=pool, **SETTINGS)
    learn(undisturbed)
    killing = cartpole_pool(KillingPool, kill_at=5)  # iteration 2, its first wave, actor 0
    try:
        model = VineTRPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), branch_pool=killing, **SETTINGS)
        rows = learn(model)
        assert_same_run(model, undisturbed)  # with the critic's bootstrap: same split over two actors, same bits
        assert [row["rollout/branch_retries"] for row in rows] == [0, 1] and killing.retries == 1
        ((index, old_id),) = killing.killed
        assert index == 0 and killing.places[0].actor_id != old_id
        assert ray.get(killing.actors[0].describe.remote(), timeout=30)["pid"] == killing.places[0].pid
    finally:
        killing.close()


def test_lost_actor_beyond_max_retries_raises_branch_worker_lost_and_the_pool_goes_on() -> None:
    killing = cartpole_pool(KillingPool, kill_at=2, max_retries=0)
    try:
        model = VineTRPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), branch_pool=killing, **SETTINGS)
        before = parameters(model)
        with pytest.raises(BranchWorkerLost) as caught:
            learn(model, iterations=1)
        error = caught.value
        assert isinstance(error, EnvWorkerLost) and error.actor_indices == [1]
        for needed in ("branch actor 1", "model.save(", "reset_num_timesteps=False", "VineTRPO.load("):
            assert needed in str(error), needed
        assert all(th.equal(value, before[name]) for name, value in parameters(model).items())
        rows = learn(model, iterations=1)  # the lost actor was replaced: the next waves run
        assert rows[-1]["rollout/branch_retries"] == 0 and model._n_updates == 1
    finally:
        killing.close()


def test_pool_env_with_another_wrapper_chain_fails_at_construction_naming_both() -> None:
    pool = RayBranchPool("CartPole-v1", n_actors=1, monitor=False, num_cpus_per_actor=0.25)
    try:
        with pytest.raises(SnapshotError, match="not the training env's kind") as caught:
            VineTRPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), branch_pool=pool, **SETTINGS)
        assert "Monitor > TimeLimit" in str(caught.value) and "monitor=" in str(caught.value)
    finally:
        pool.close()


def test_ray_vec_env_trunk_with_branches_on_the_pool(pool: RecordingPool, in_process: VineTRPO) -> None:
    env = RayVecEnv("CartPole-v1", n_envs=2, envs_per_actor=2, seed=0, num_cpus_per_actor=0.25)
    try:
        model = VineTRPO("MlpPolicy", env, branch_pool=pool, **EXACT)
        learn(model)
        assert_same_run(model, in_process)  # snapshots taken on the RayVecEnv's actors
    finally:
        env.close()


def test_split_wave_ships_each_snapshot_once_and_join_rebuilds_the_wave(pool: RecordingPool) -> None:
    model = VineTRPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=0), branch_pool=pool, **SETTINGS)
    captured: list[Any] = []
    runner = model.branch_runner
    original = runner._call
    runner._call = lambda command, payloads: captured.append(payloads) or original(command, payloads)  # type: ignore[method-assign]
    learn(model, iterations=1)
    waves = captured[0]
    shared, parts = split_wave(waves)
    all_snapshots = [s for wave in waves for s in wave.snapshots]
    assert len(shared.snapshots) == len({id(s) for s in all_snapshots}) < len(all_snapshots)  # K = 2 share one
    for wave, part in zip(waves, parts, strict=True):
        joined = join_wave(shared, part)
        assert [id(s) for s in joined.snapshots] == [id(s) for s in wave.snapshots]
        np.testing.assert_array_equal(joined.first_actions, wave.first_actions)
        assert joined.config == wave.config and joined.transform is wave.transform
        assert all(np.array_equal(joined.policy[2][k], v) for k, v in wave.policy[2].items())
