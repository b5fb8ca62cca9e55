"""
Bad inputs fail loudly at construction, and a NaN in the data never reaches the parameters.
"""

import inspect
import math
import re
import typing
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces

from sb3_trpo_ext import TRPO, NaturalPG, VineTRPO

ALGORITHMS = [TRPO, NaturalPG]
SMALL = dict(n_steps=64, batch_size=32, n_critic_updates=1, policy_kwargs=dict(net_arch=dict(pi=[8], vf=[8])))


def _make(algorithm: type, env: Any = "CartPole-v1", **kwargs: Any):
    return algorithm("MlpPolicy", env, **{**SMALL, **kwargs})


# ---------------------------------------------------------------------------------------------------- shared keywords


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.__name__)
@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("target_kl", 0.0),
        ("target_kl", -0.01),
        ("target_kl", float("nan")),
        ("cg_max_steps", 0),
        ("cg_max_steps", -3),
        ("cg_max_steps", 2.5),
        ("cg_max_steps", 10.0),
        ("cg_damping", -0.1),
        ("fisher_sample_fraction", 0.0),
        ("fisher_sample_fraction", -0.5),
        ("fisher_sample_fraction", 1.5),
        ("sub_sampling_factor", 0),
        ("sub_sampling_factor", -1),
        ("sub_sampling_factor", 1.5),
    ],
)
def test_bad_shared_keyword_raises_value_error_naming_it(algorithm: type, keyword: str, value: Any) -> None:
    with pytest.raises(ValueError, match=keyword):
        _make(algorithm, **{keyword: value})


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.__name__)
@pytest.mark.parametrize(("n_envs", "batch_size"), [(1, 65), (2, 129), (2, 48)])
def test_a_batch_size_that_does_not_divide_the_rollout_warns_and_trains(algorithm: type, n_envs: int, batch_size: int) -> None:
    # as sb3-contrib: a warning naming the truncated mini-batch, then training on it (SB3's A2C defaults in
    # SB3's own tests give n_steps=5, far below our batch_size=128)
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("CartPole-v1", n_envs=n_envs)
    with pytest.warns(UserWarning, match=f"batch_size={batch_size}.*truncated mini-batch of {(64 * n_envs) % batch_size}"):
        model = _make(algorithm, env, batch_size=batch_size, n_critic_updates=2)
    critic = [p.detach().clone() for p in model.policy.value_net.parameters()]
    model.learn(64 * n_envs)
    assert model.logger.name_to_value["train/value_loss"] > 0
    assert any(not th.equal(p, q) for p, q in zip(model.policy.value_net.parameters(), critic, strict=True))
    env.close()


def test_a_batch_size_larger_than_the_samples_gives_one_minibatch_of_all_of_them() -> None:
    from sb3_trpo_ext.common.critic import minibatches

    batches = list(minibatches(10, 128, 3))
    assert len(batches) == 3 and all(sorted(batch.tolist()) == list(range(10)) for batch in batches)


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.__name__)
def test_a_one_sample_rollout_with_advantage_normalization_raises_assertion_error(algorithm: type) -> None:
    # sb3-contrib raises AssertionError here (its test_trpo_warnings expects that type); ours says what to change
    with pytest.raises(AssertionError, match="normalize_advantage=False"):
        algorithm("MlpPolicy", "Pendulum-v1", n_steps=1)
    model = algorithm("MlpPolicy", "Pendulum-v1", n_steps=1, normalize_advantage=False, batch_size=1)
    assert model.n_steps == 1


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.__name__)
def test_boundary_values_are_accepted_and_learn(algorithm: type) -> None:
    model = _make(algorithm, cg_damping=0.0, fisher_sample_fraction=1.0, cg_max_steps=1, batch_size=64)
    assert model.cg_damping == 0.0 and model.fisher_sample_fraction == 1.0 and model.batch_size == 64
    before = [p.detach().clone() for p in model.policy.action_net.parameters()]
    model.learn(64)
    assert model.skipped_updates == 0
    assert any(not th.equal(p, q) for p, q in zip(model.policy.action_net.parameters(), before, strict=True))


# ---------------------------------------------------------------------------------------------------- TRPO only


@pytest.mark.parametrize("factor", [0.0, 1.0, 1.5, -0.5])
def test_trpo_line_search_shrinking_factor_outside_open_unit_interval_raises(factor: float) -> None:
    with pytest.raises(ValueError, match="line_search_shrinking_factor"):
        _make(TRPO, line_search_shrinking_factor=factor)


@pytest.mark.parametrize("max_iter", [0, -1, 2.0])
def test_trpo_line_search_max_iter_below_one_raises(max_iter: Any) -> None:
    with pytest.raises(ValueError, match="line_search_max_iter"):
        _make(TRPO, line_search_max_iter=max_iter)


# ---------------------------------------------------------------------------------------------------- NaturalPG only


@pytest.mark.parametrize("step_mode", ["adaptive", "KL", "", None])
def test_natural_pg_invalid_step_mode_raises(step_mode: Any) -> None:
    with pytest.raises(ValueError, match="step_mode"):
        _make(NaturalPG, step_mode=step_mode)


@pytest.mark.parametrize("step_size", [0.0, -0.1, float("nan")])
def test_natural_pg_non_positive_step_size_raises(step_size: float) -> None:
    with pytest.raises(ValueError, match="step_size"):
        _make(NaturalPG, step_mode="constant", step_size=step_size)


# ---------------------------------------------------------------------------------------------------- action spaces


class _CompositeActionEnv(gym.Env):
    """A one-step environment with a composite (Tuple or Dict) action space."""

    observation_space = spaces.Box(-1.0, 1.0, (2,), dtype=np.float32)

    def __init__(self, kind: str) -> None:
        parts = (spaces.Discrete(2), spaces.Box(-1.0, 1.0, (1,), dtype=np.float32))
        self.action_space = spaces.Tuple(parts) if kind == "tuple" else spaces.Dict({"a": parts[0], "b": parts[1]})

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return np.zeros(2, dtype=np.float32), {}

    def step(self, action: Any):
        return np.zeros(2, dtype=np.float32), 0.0, True, False, {}


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.__name__)
@pytest.mark.parametrize("kind", ["tuple", "dict"])
def test_unsupported_action_space_raises_value_error_naming_action_space(algorithm: type, kind: str) -> None:
    with pytest.raises(ValueError, match="action space") as info:
        _make(algorithm, _CompositeActionEnv(kind))
    assert algorithm.__name__ in str(info.value)


# ---------------------------------------------------------------------------------------------------- NaN in the data


class _NanRewardAt(gym.Wrapper):
    """Returns a NaN reward at step ``nan_step`` (counted over the whole life of the wrapper)."""

    def __init__(self, env: gym.Env, nan_step: int) -> None:
        super().__init__(env)
        self.nan_step = nan_step
        self.steps = 0

    def step(self, action: Any):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps == self.nan_step:
            reward = float("nan")
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.__name__)
@pytest.mark.parametrize(("env_id", "nan_step"), [("CartPole-v1", 20), ("Pendulum-v1", 64)])
@pytest.mark.parametrize("normalize_advantage", [True, False])
def test_nan_reward_leaves_every_policy_parameter_unchanged_and_counts_a_skipped_update(
    algorithm: type, env_id: str, nan_step: int, normalize_advantage: bool
) -> None:
    env = _NanRewardAt(gym.make(env_id), nan_step)
    model = _make(algorithm, env, seed=0, normalize_advantage=normalize_advantage, n_critic_updates=2)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    assert model.skipped_updates == 0

    model.learn(total_timesteps=64)

    assert env.steps >= nan_step  # the NaN was really collected
    assert np.isnan(model.rollout_buffer.rewards).any()
    after = model.policy.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not th.equal(before[k], after[k])]
    assert changed == []
    assert model.skipped_updates >= 1
    logged = model.logger.name_to_value
    assert logged["train/skipped_updates"] >= 1
    assert logged["train/step_size"] == 0.0
    assert logged["train/is_line_search_success"] == 0.0
    assert all(th.isfinite(p).all() for p in model.policy.parameters())


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a.__name__)
def test_finite_rollout_updates_the_policy_without_skipping(algorithm: type) -> None:
    # Control for the NaN test: the same setup without the NaN does change the actor and logs no skipped update.
    model = _make(algorithm, "CartPole-v1", seed=0)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    model.learn(total_timesteps=64)
    after = model.policy.state_dict()
    assert any(not th.equal(before[k], after[k]) for k in before if k.startswith("action_net"))
    assert model.skipped_updates == 0
    logged = model.logger.name_to_value
    assert logged["train/skipped_updates"] == 0
    assert math.isfinite(logged["train/kl_divergence_loss"])
    assert logged["train/kl_divergence_loss"] <= model.max_kl * (1.0 + 1e-6) or algorithm is NaturalPG


# ---------------------------------------------------------------------------------------------------- keyword types


def numeric_keywords(cls: type) -> list[str]:
    """The constructor keywords annotated with ``int`` or ``float`` (alone or in a union, e.g. ``float | None``)."""
    names = []
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        annotation = parameter.annotation
        if any(arg in (int, float) for arg in typing.get_args(annotation) or (annotation,)):
            names.append(name)
    return names


def test_numeric_keywords_cover_the_validated_ones() -> None:
    assert {"target_kl", "n_steps", "learning_rate", "cg_damping", "seed", "verbose"} <= set(numeric_keywords(TRPO))
    assert {"line_search_shrinking_factor", "line_search_max_iter"} <= set(numeric_keywords(TRPO))
    assert "step_size" in numeric_keywords(NaturalPG)
    assert {"n_rollout_states", "n_actions_per_state", "rollout_length"} <= set(numeric_keywords(VineTRPO))


@pytest.mark.parametrize(
    ("algorithm", "keyword"),
    [(cls, keyword) for cls in (TRPO, NaturalPG, VineTRPO) for keyword in numeric_keywords(cls)],
    ids=lambda value: value.__name__ if isinstance(value, type) else value,
)
def test_a_string_for_a_numeric_keyword_raises_type_error_naming_keyword_value_and_type(algorithm: type, keyword: str) -> None:
    # TRPO(..., target_kl="0.01") used to fail inside a comparison: "'>' not supported between 'str' and 'int'"
    with pytest.raises(TypeError) as info:
        algorithm("MlpPolicy", "CartPole-v1", **{keyword: "1"})
    message = str(info.value)
    assert message.startswith(f"{keyword} must be"), message
    assert "'1'" in message and "str" in message and f"{keyword}=1" in message  # the value, its type and the fix


@pytest.mark.parametrize(("keyword", "value"), [("gamma", None), ("n_steps", [64]), ("target_kl", b"0.01")])
def test_a_non_number_for_a_numeric_keyword_raises_type_error(keyword: str, value: Any) -> None:
    with pytest.raises(TypeError, match=f"^{keyword} must be .*got {re.escape(repr(value))} of type"):
        _make(TRPO, **{keyword: value})


def test_a_schedule_is_still_a_valid_learning_rate() -> None:
    assert _make(TRPO, learning_rate=lambda progress: 1e-3 * progress).lr_schedule(1.0) == pytest.approx(1e-3)


# ---------------------------------------------------------------------------------------------------- policy names


@pytest.mark.parametrize("algorithm", [TRPO, NaturalPG, VineTRPO], ids=lambda a: a.__name__)
def test_an_unknown_policy_name_raises_value_error_listing_the_valid_names(algorithm: type) -> None:
    # the type SB3's BaseAlgorithm._get_policy_from_name raises
    with pytest.raises(ValueError, match="^Policy MLPPolicy unknown: ") as info:
        algorithm("MLPPolicy", "CartPole-v1")
    message = str(info.value)
    assert all(name in message for name in ("'MlpPolicy'", "'CnnPolicy'", "'MultiInputPolicy'"))
    assert "Did you mean 'MlpPolicy'?" in message


def test_a_recurrent_policy_name_names_the_recurrent_classes() -> None:
    with pytest.raises(ValueError, match="^Policy MlpLstmPolicy unknown: ") as info:
        TRPO("MlpLstmPolicy", "CartPole-v1")
    message = str(info.value)
    assert "'MlpPolicy'" in message and "sb3_trpo_ext.RecurrentTRPO('MlpLstmPolicy', env)" in message


# ---------------------------------------------------------------------------------------------------- load


@pytest.fixture(scope="module")
def saved_zips(tmp_path_factory: pytest.TempPathFactory) -> dict[type, Path]:
    """A zip saved by each of our classes (untrained)."""
    folder = tmp_path_factory.mktemp("zips")
    zips = {}
    for cls in (TRPO, NaturalPG, VineTRPO):
        extra = dict(n_rollout_states=4) if cls is VineTRPO else {}
        cls("MlpPolicy", "CartPole-v1", **{**SMALL, **extra}).save(folder / cls.__name__)
        zips[cls] = folder / f"{cls.__name__}.zip"
    return zips


@pytest.mark.parametrize(
    ("saved", "loading"),
    [(a, b) for a in (TRPO, NaturalPG, VineTRPO) for b in (TRPO, NaturalPG, VineTRPO) if a is not b],
    ids=lambda cls: cls.__name__,
)
def test_loading_a_zip_with_another_of_our_classes_raises_naming_both(
    saved_zips: dict[type, Path], saved: type, loading: type
) -> None:
    # VineTRPO.load of a TRPO zip used to load, then train as a vine with default vine settings, with no word
    path = saved_zips[saved]
    for given in (path, str(path.with_suffix(""))):  # with or without .zip, as SB3's load takes it
        with pytest.raises(ValueError, match=f"saved by {saved.__name__}, but {loading.__name__}.load was called"):
            loading.load(given)
    with open(path, "rb") as file, pytest.raises(ValueError, match=f"Load it with {saved.__name__}.load"):
        loading.load(file)


@pytest.mark.parametrize("cls", [TRPO, NaturalPG, VineTRPO], ids=lambda cls: cls.__name__)
def test_each_class_still_loads_its_own_zip_from_a_path_or_a_file(saved_zips: dict[type, Path], cls: type) -> None:
    assert type(cls.load(saved_zips[cls])) is cls
    with open(saved_zips[cls], "rb") as file:
        assert type(cls.load(file)) is cls


# ---------------------------------------------------------------------------------------------------- warnings


@pytest.mark.parametrize("algorithm", [TRPO, NaturalPG, VineTRPO], ids=lambda a: a.__name__)
def test_a_construction_warning_points_at_the_users_line(algorithm: type) -> None:
    # the batch_size warning pointed at trpo.py:114 (the super().__init__ call) instead of the user's call
    with pytest.warns(UserWarning, match="batch_size=48 does not divide") as record:
        algorithm("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=48)
    assert [Path(warning.filename).name for warning in record] == [Path(__file__).name] * len(record)


def test_the_vine_rollout_set_warning_points_at_the_users_line() -> None:
    with pytest.warns(UserWarning, match="n_rollout_states=128 exceeds") as record:
        VineTRPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_rollout_states=128)
    assert Path(record[0].filename).name == Path(__file__).name


def test_every_warning_of_the_package_is_raised_at_the_users_line() -> None:
    """No ``warnings.warn`` with a fixed ``stacklevel`` in our constructors' paths (it cannot know its depth)."""
    package = Path(TRPO.__module__.replace(".", "/")).parts[0]
    root = Path(__file__).resolve().parents[1] / package
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if "distributed" in path.parts:  # RayVecEnv.get_images warns as SB3's VecEnvs do, at its caller
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if "warnings.warn(" in line and "def " not in line:
                offenders.append(f"{path.relative_to(root.parent)}:{number}")
    allowed = {f"{package}/common/user_warnings.py"}
    assert [o for o in offenders if o.rsplit(":", 1)[0] not in allowed] == []
