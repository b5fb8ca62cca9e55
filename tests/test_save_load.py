"""
Saving and loading: round trips, a fresh process, sb3-contrib's TRPO in both directions, continued learning.

The vine's ``num_timesteps`` counts its branch steps on top of the trunk's (8 to 24 per iteration with
``VINE_BRANCHES``; exactly 24 on Pendulum, whose episodes never end within a branch).
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sb3_contrib
import torch as th
from conftest import ALGORITHMS, SMALL, VINE_BRANCHES, SimulatorSteps, branch_steps_range, budget, small
from stable_baselines3.common.env_util import make_vec_env

from sb3_trpo_ext import TRPO, NaturalPG, VineTRPO


def observations(env_id: str, n: int = 16) -> np.ndarray:
    """A fixed batch of plausible observations."""
    rng = np.random.default_rng(123)
    dim = {"Pendulum-v1": 3, "CartPole-v1": 4}[env_id]
    return rng.uniform(-1.0, 1.0, size=(n, dim)).astype(np.float32)


def predictions(model: Any, obs: np.ndarray) -> np.ndarray:
    actions, _ = model.predict(obs, deterministic=True)
    return actions


def assert_same_policy_parameters(a: Any, b: Any) -> None:
    state_a, state_b = a.policy.state_dict(), b.policy.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert th.equal(state_a[name].cpu(), state_b[name].cpu()), name


def trained(cls: type, env_id: str, wrapper_class: type | None = None, **kwargs: Any) -> Any:
    """Two iterations of 64 steps on ``env_id``."""
    model = cls("MlpPolicy", make_vec_env(env_id, n_envs=1, seed=0, wrapper_class=wrapper_class), **small(cls, **kwargs))
    model.learn(budget(cls, 2, 64))
    return model


def pendulum_steps(algorithm: type, iterations: int) -> int:
    """``num_timesteps`` after ``iterations`` iterations of 64 steps on Pendulum (where no branch ends early)."""
    return 64 * iterations + branch_steps_range(algorithm, iterations)[1]


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_deterministic_predictions_are_identical_after_save_and_load(algorithm: type, env_id: str, tmp_path: Path) -> None:
    extra = dict(step_mode="constant", step_size=0.05) if algorithm is NaturalPG else dict(line_search_max_iter=7)
    if algorithm is VineTRPO:  # its own keywords, away from their defaults
        extra.update(bootstrap_branches=False, common_random_numbers=False, branch_envs_per_worker=3)
    model = trained(algorithm, env_id, target_kl=0.02, cg_max_steps=7, **extra)
    obs = observations(env_id)
    expected = predictions(model, obs)
    model.save(tmp_path / "model.zip")

    loaded = algorithm.load(tmp_path / "model.zip", device="cpu")
    assert type(loaded) is algorithm
    np.testing.assert_array_equal(predictions(loaded, obs), expected)
    assert_same_policy_parameters(model, loaded)
    # hyperparameters and counters travel with the zip
    assert (loaded.max_kl, loaded.cg_max_steps, loaded.n_steps) == (pytest.approx(0.02), 7, 64)
    assert loaded.num_timesteps == model.num_timesteps and loaded._n_updates == 2
    least, most = branch_steps_range(algorithm, 2)
    assert least <= loaded.num_timesteps - 128 <= most, loaded.num_timesteps
    if algorithm is NaturalPG:
        assert (loaded.step_mode, loaded.step_size) == ("constant", 0.05)
    else:
        assert loaded.line_search_max_iter == 7
    if algorithm is VineTRPO:
        assert {key: getattr(loaded, key) for key in VINE_BRANCHES} == VINE_BRANCHES
        flags = (loaded.bootstrap_branches, loaded.common_random_numbers, loaded.branch_envs_per_worker)
        assert flags == (False, False, 3) and loaded.action_sampling == "policy"


PREDICT_SCRIPT = """
import json, sys
import numpy as np
import sb3_trpo_ext
obs = np.array(json.loads(sys.argv[1]), dtype=np.float32)
for name, path in zip(sys.argv[2::2], sys.argv[3::2]):
    model = getattr(sb3_trpo_ext, name).load(path, device="cpu")
    actions, _ = model.predict(obs, deterministic=True)
    print(json.dumps({"name": name, "class": type(model).__name__, "actions": actions.tolist()}))
"""


@pytest.fixture(scope="module")
def fresh_process_predictions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """
    Per algorithm: a trained model's deterministic actions on ``observations("Pendulum-v1")``, and what a fresh Python
    process that loaded its zip printed. One process loads the three zips (an interpreter start costs seconds).
    """
    folder = tmp_path_factory.mktemp("fresh_process")
    obs = observations("Pendulum-v1")
    expected, arguments = {}, []
    for cls in ALGORITHMS:
        model = trained(cls, "Pendulum-v1")
        expected[cls.__name__] = predictions(model, obs)
        model.save(folder / f"{cls.__name__}.zip")
        arguments += [cls.__name__, str(folder / f"{cls.__name__}.zip")]
    result = subprocess.run(
        [sys.executable, "-c", PREDICT_SCRIPT, json.dumps(obs.tolist()), *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.strip().splitlines() if line.startswith("{")]
    return {name: (expected[name], next(output for output in printed if output["name"] == name)) for name in expected}


def test_loaded_model_predicts_identically_in_a_fresh_process(
    algorithm: type, fresh_process_predictions: dict[str, tuple[np.ndarray, dict[str, Any]]]
) -> None:
    expected, output = fresh_process_predictions[algorithm.__name__]
    assert output["class"] == algorithm.__name__
    np.testing.assert_array_equal(np.array(output["actions"], dtype=np.float32), expected)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_our_trpo_loads_an_sb3_contrib_zip_and_predicts_identically(env_id: str, tmp_path: Path) -> None:
    theirs = sb3_contrib.TRPO("MlpPolicy", make_vec_env(env_id, n_envs=1, seed=0), **SMALL)
    theirs.learn(128)
    obs = observations(env_id)
    expected = predictions(theirs, obs)
    theirs.save(tmp_path / "contrib.zip")

    ours = TRPO.load(tmp_path / "contrib.zip", env=make_vec_env(env_id, n_envs=1, seed=1), device="cpu")
    assert type(ours) is TRPO
    np.testing.assert_array_equal(predictions(ours, obs), expected)
    assert_same_policy_parameters(theirs, ours)
    # and it trains on from there with our update
    before = {name: value.clone() for name, value in ours.policy.state_dict().items()}
    ours.learn(128, reset_num_timesteps=False)
    assert ours.num_timesteps == 256
    assert not th.equal(before["value_net.weight"], ours.policy.state_dict()["value_net.weight"])


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_sb3_contrib_trpo_loads_our_zip_and_predicts_identically(env_id: str, tmp_path: Path) -> None:
    ours = trained(TRPO, env_id)
    obs = observations(env_id)
    expected = predictions(ours, obs)
    ours.save(tmp_path / "ours.zip")

    theirs = sb3_contrib.TRPO.load(tmp_path / "ours.zip", env=make_vec_env(env_id, n_envs=1, seed=1), device="cpu")
    assert type(theirs) is sb3_contrib.TRPO
    np.testing.assert_array_equal(predictions(theirs, obs), expected)
    assert_same_policy_parameters(ours, theirs)
    theirs.learn(64, reset_num_timesteps=False)  # sb3-contrib can keep training it (optimizer state included)
    assert theirs.num_timesteps == 192


def test_a_zip_gives_ours_and_sb3_contrib_the_same_trust_region_and_damping(algorithm: type, tmp_path: Path) -> None:
    # 3-D actions: the zip holds sb3-contrib's per-dimension units, which both libraries read as the same region
    model = algorithm("MlpPolicy", "Hopper-v5", n_steps=64, batch_size=32, target_kl=0.06, cg_damping=0.3)
    model.save(tmp_path / "model.zip")
    assert (model.target_kl, model.cg_damping, model.trust_region_units) == (0.06, 0.3, "distribution")  # unchanged
    loaded = algorithm.load(tmp_path / "model.zip", device="cpu")
    assert (loaded.max_kl, loaded.fisher_damping) == (pytest.approx(0.06), pytest.approx(0.3))
    theirs = sb3_contrib.TRPO.load(tmp_path / "model.zip", device="cpu", custom_objects={"step_mode": "kl"})
    assert (theirs.target_kl, theirs.cg_damping) == (pytest.approx(0.02), pytest.approx(0.1))


def test_learn_with_reset_num_timesteps_false_continues_the_count(algorithm: type) -> None:
    steps = SimulatorSteps()  # every simulator step, the vine's branches included: what num_timesteps counts
    least, most = branch_steps_range(algorithm, 1)  # per iteration: (0, 0) for TRPO and NaturalPG
    model = trained(algorithm, "CartPole-v1", wrapper_class=steps.wrapper)
    assert (model.num_timesteps, model._n_updates) == (steps.count, 2)
    assert 2 * least <= model.num_timesteps - 128 <= 2 * most
    model.learn(budget(algorithm, 2, 64), reset_num_timesteps=False)
    assert (model.num_timesteps, model._n_updates) == (steps.count, 4)
    assert 4 * least <= model.num_timesteps - 256 <= 4 * most
    counted = steps.count
    model.learn(budget(algorithm, 1, 64))  # the default resets the step counter (not the update counter)
    assert (model.num_timesteps, model._n_updates) == (steps.count - counted, 5)
    assert least <= model.num_timesteps - 64 <= most


def test_loaded_model_keeps_learning_and_moves_its_actor(algorithm: type, tmp_path: Path) -> None:
    model = trained(algorithm, "Pendulum-v1")
    model.save(tmp_path / "model.zip")
    loaded = algorithm.load(tmp_path / "model.zip", env=make_vec_env("Pendulum-v1", n_envs=1, seed=5), device="cpu")
    before = {name: value.clone() for name, value in loaded.policy.state_dict().items()}
    stats: list[dict[str, Any]] = []
    original_train = loaded.train

    def train() -> None:
        original_train()
        stats.append(dict(loaded.logger.name_to_value))

    loaded.train = train
    loaded.learn(budget(algorithm, 2, 64), reset_num_timesteps=False)
    assert loaded.num_timesteps == pendulum_steps(algorithm, 4)  # TRPO and NaturalPG 256, the vine 256 + 4 x 24
    assert loaded._n_updates == 4
    assert len(stats) == 2
    assert all(np.isfinite(update["train/policy_objective"]) for update in stats)
    assert any(update["train/is_line_search_success"] == 1.0 for update in stats)
    after = loaded.policy.state_dict()
    # the natural-gradient step acts on the loaded policy's own parameters
    assert not th.equal(before["action_net.weight"], after["action_net.weight"])
    assert not th.equal(before["value_net.weight"], after["value_net.weight"])
