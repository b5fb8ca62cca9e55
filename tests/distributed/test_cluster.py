"""
RayVecEnv on a simulated 2-node cluster (``ray.cluster_utils.Cluster``, both nodes on 127.0.0.1, one CPU each):
actors on both nodes, an actor killed in the middle of a rollout, a node removed in the middle of a rollout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")

import torch as th  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402

from sb3_trpo_ext import TRPO  # noqa: E402
from sb3_trpo_ext.distributed import EnvWorkerLost, RayVecEnv  # noqa: E402

pytestmark = pytest.mark.timeout(180)

TRPO_SETTINGS: dict[str, Any] = dict(n_steps=16, batch_size=64, n_critic_updates=2, seed=0)


@pytest.fixture(scope="module")
def cluster(isolated_network: None) -> Iterator[tuple[Cluster, Any]]:
    """A head node and one worker node, one CPU each; :return: the cluster and the worker node"""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster, worker
    ray.shutdown()
    cluster.shutdown()


def make_env(cluster: Cluster, **kwargs: Any) -> RayVecEnv:
    """4 CartPole envs, 2 actors of one CPU each: SPREAD puts one on each node."""
    return RayVecEnv("CartPole-v1", n_envs=4, envs_per_actor=2, seed=0, ray_address=cluster.address, **kwargs)


class AtStep(BaseCallback):
    """Calls ``action`` once, at step ``step`` of the second rollout (after one completed update)."""

    def __init__(self, action: Callable[[], None], step: int = 3) -> None:
        super().__init__()
        self.action, self.step, self.rollouts, self.calls = action, step, 0, 0
        self.snapshot: dict[str, th.Tensor] = {}

    def _on_rollout_start(self) -> None:
        self.rollouts, self.calls = self.rollouts + 1, 0
        self.snapshot = {name: value.detach().clone() for name, value in self.model.policy.state_dict().items()}

    def _on_step(self) -> bool:
        self.calls += 1
        if self.rollouts == 2 and self.calls == self.step:
            self.action()
        return True


def learn_until_lost(env: RayVecEnv, action: Callable[[], None]) -> tuple[EnvWorkerLost, TRPO, AtStep]:
    """Train TRPO on ``env`` until ``action`` (at the second rollout) makes it fail; :return: the error"""
    model = TRPO("MlpPolicy", env, **TRPO_SETTINGS)
    callback = AtStep(action)
    with pytest.raises(EnvWorkerLost) as caught:
        model.learn(10_000, callback=callback)
    for name, value in model.policy.state_dict().items():
        assert th.equal(value, callback.snapshot[name]), name  # still the parameters of the last completed update
    return caught.value, model, callback


def test_actors_are_spread_over_both_nodes(cluster: tuple[Cluster, Any]) -> None:
    env = make_env(cluster[0])  # the first RayVecEnv joins the cluster through ray_address
    try:
        alive = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
        assert len(alive) == 2
        node_ids = [place.node_id for place in env.places]
        assert len(set(node_ids)) == 2 and set(node_ids) == alive
        assert all(place.node_ip == "127.0.0.1" for place in env.places)
        env.reset()
        assert env.step(np.zeros(4, dtype=np.int64))[0].shape == (4, 4)
    finally:
        env.close()


def test_actor_killed_mid_rollout(cluster: tuple[Cluster, Any]) -> None:
    env = make_env(cluster[0])
    try:
        victim = env.places[0]
        error, _, _ = learn_until_lost(env, lambda: ray.kill(env.actors[0]))
    finally:
        env.close()
    assert error.env_indices == [0, 1] and error.places == [victim]
    message = str(error)
    for needed in ("envs 0-1 on actor 0", victim.actor_id, victim.node_id, "127.0.0.1", "model.save(", "set_env("):
        assert needed in message, needed


def test_node_removed_mid_rollout_then_resume_on_the_node_left(cluster: tuple[Cluster, Any]) -> None:
    env = make_env(cluster[0])
    try:
        worker_node = cluster[1]
        victim = next(place for place in env.places if place.node_id == worker_node.node_id)
        error, model, _ = learn_until_lost(env, lambda: cluster[0].remove_node(worker_node))
    finally:
        env.close()
    assert error.env_indices == list(range(victim.start, victim.stop)) and error.places == [victim]
    assert victim.node_id in str(error) and "reset_num_timesteps=False" in str(error)

    fresh = make_env(cluster[0], num_cpus_per_actor=0.5)  # one node of one CPU is left: both actors go there
    try:
        assert {place.node_id for place in fresh.places} == {cluster[0].head_node.node_id}
        model.set_env(fresh)
        done_before = model.num_timesteps
        model.learn(64, reset_num_timesteps=False)
        assert model.num_timesteps >= done_before + 64
    finally:
        fresh.close()
