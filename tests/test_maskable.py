"""
MaskableTRPO and MaskableNaturalPG: the masked KL and its Fisher against an independent computation, the masks a
rollout stores, no masked action ever sampled, predict with masks, save/load, MaskableEvalCallback, the errors.

sb3-contrib's own ``tests/test_invalid_actions.py`` runs with our classes in ``MaskablePPO``'s place through
``tests/contracts/run_peer_suites.py --suites sb3-contrib-mask``.
"""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from sb3_contrib.common.envs import InvalidActionEnvDiscrete, InvalidActionEnvMultiBinary, InvalidActionEnvMultiDiscrete
from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
from sb3_contrib.common.maskable.evaluation import evaluate_policy
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from sb3_contrib.common.maskable.utils import get_action_masks
from stable_baselines3.common.callbacks import EventCallback, StopTrainingOnNoModelImprovement
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor

from envs.slot_scheduling import SlotSchedulingEnv
from sb3_trpo_ext import TRPO, MaskableNaturalPG, MaskableTRPO, VineTRPO
from sb3_trpo_ext.common.fisher import actor_parameters, detach_distribution, kl_per_state, make_fisher_vector_product
from sb3_trpo_ext.maskable.batch import MaskedAdvantageBatch, masked_batch

MASKABLE = [MaskableTRPO, MaskableNaturalPG]
SMALL = dict(n_steps=64, batch_size=64, n_critic_updates=2, seed=0)


@pytest.fixture(params=MASKABLE, ids=lambda cls: cls.__name__)
def maskable(request: pytest.FixtureRequest) -> type:
    return request.param


# ---------------------------------------------------------------------------------------------------- the math


def raw_logits(policy: MaskableActorCriticPolicy, observations: th.Tensor) -> th.Tensor:
    """The actor's logits before any mask."""
    features = policy.extract_features(observations, policy.pi_features_extractor)
    return policy.action_net(policy.mlp_extractor.forward_actor(features))


def random_masks(dims: list[int], n: int, rng: np.random.Generator) -> th.Tensor:
    """Random masks, at least one valid action per component; the first state has a single valid action each."""
    rows = []
    for i in range(n):
        row = []
        for size in dims:
            valid = np.zeros(size, dtype=bool)
            keep = rng.choice(size, 1 if i == 0 else rng.integers(1, size + 1), replace=False)
            valid[keep] = True
            row.append(valid)
        rows.append(np.concatenate(row))
    return th.as_tensor(np.stack(rows))


def masked_softmax(logits: np.ndarray, valid: np.ndarray) -> np.ndarray:
    shifted = np.where(valid, logits - logits[valid].max(), -np.inf)
    return np.where(valid, np.exp(shifted), 0.0) / np.exp(shifted[valid]).sum()


SPACES = {
    "Discrete": (lambda: InvalidActionEnvDiscrete(dim=6, n_invalid_actions=3), [6]),
    "MultiDiscrete": (lambda: InvalidActionEnvMultiDiscrete(dims=[3, 4], n_invalid_actions=2), [3, 4]),
    "MultiBinary": (lambda: InvalidActionEnvMultiBinary(dims=3, n_invalid_actions=2), [2, 2, 2]),
}


@pytest.mark.parametrize("space", list(SPACES))
def test_masked_kl_and_fisher_equal_an_independent_computation_over_the_valid_actions(space: str) -> None:
    make_env, dims = SPACES[space]
    model = MaskableTRPO("MlpPolicy", make_env(), policy_kwargs=dict(net_arch=[8]), **SMALL)
    policy, rng = model.policy, np.random.default_rng(0)
    n = 12
    observations = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(n)]), dtype=th.float32)
    masks = random_masks(dims, n, rng)
    batch = MaskedAdvantageBatch(observations, th.zeros(n, len(dims)), th.zeros(n), masks)
    with th.no_grad():
        old_logits = raw_logits(policy, observations).double().numpy()
    old = detach_distribution(batch.distribution(policy))
    components = old.distribution if isinstance(old.distribution, list) else [old.distribution]
    probs = th.cat([c.probs for c in components], dim=1)
    assert (probs[~masks] == 0).all() and th.isfinite(probs).all()  # exactly zero, not "near zero"

    # Fisher at the old parameters: F = mean_s J_s^T blockdiag(diag(p) - p p^T) J_s, J_s = d logits / d theta
    params = actor_parameters(policy, batch.distribution(policy))
    fisher = make_fisher_vector_product(
        "double-backprop", policy, observations, params, batch.distribution(policy), "float32", batch.state_mean
    )
    logits = raw_logits(policy, observations)
    jacobians = th.stack([
        th.cat([g.reshape(-1) for g in th.autograd.grad(logits[s, j], params, retain_graph=True)])
        for s in range(n) for j in range(sum(dims))
    ]).reshape(n, sum(dims), -1).double()  # fmt: skip
    explicit = th.zeros(jacobians.shape[2], jacobians.shape[2], dtype=th.float64)
    for s in range(n):
        metric, start = th.zeros(sum(dims), sum(dims), dtype=th.float64), 0
        for size in dims:
            valid = masks[s, start : start + size].numpy()
            p = th.as_tensor(masked_softmax(old_logits[s, start : start + size], valid))
            metric[start : start + size, start : start + size] = th.diag(p) - th.outer(p, p)
            start += size
        explicit += jacobians[s].T @ metric @ jacobians[s] / n
    for _ in range(3):
        vector = th.randn(jacobians.shape[2])
        product = fisher(vector)
        assert th.isfinite(product).all()
        th.testing.assert_close(product.double(), explicit @ vector.double(), rtol=1e-4, atol=1e-6)

    # KL(old || new) after a change of the parameters, against the KL over the valid actions in float64
    with th.no_grad():
        for param in params:
            param.add_(0.3 * th.randn_like(param))
        new_logits = raw_logits(policy, observations).double().numpy()
        kl = float(batch.state_mean(kl_per_state(old, batch.distribution(policy))))
    expected, start = np.zeros(n), 0
    for size in dims:
        for s in range(n):
            valid = masks[s, start : start + size].numpy()
            p = masked_softmax(old_logits[s, start : start + size], valid)[valid]
            q = masked_softmax(new_logits[s, start : start + size], valid)[valid]
            expected[s] += float(np.sum(p * np.log(p / q)))
        start += size
    assert np.isfinite(kl) and kl > 1e-4
    assert kl == pytest.approx(expected.mean(), rel=1e-4)
    assert expected[0] == 0.0  # a state with a single valid action per component has no KL


def test_kl_at_the_old_parameters_is_exactly_zero_and_the_step_is_finite(maskable: type) -> None:
    env = make_vec_env(lambda: InvalidActionEnvDiscrete(dim=20, n_invalid_actions=15), n_envs=2, seed=0)
    model = maskable("MlpPolicy", env, **SMALL).learn(128)
    assert model.skipped_updates == 0
    values = model.logger.name_to_value
    assert np.isfinite(values["train/kl_divergence_loss"]) and values["train/kl_divergence_loss"] > 0
    data = model._rollout_samples()
    batch = MaskedAdvantageBatch(data.observations, data.actions, data.advantages, data.action_masks.bool())
    old = detach_distribution(batch.distribution(model.policy))
    assert float(batch.state_mean(kl_per_state(old, batch.distribution(model.policy)))) == 0.0


def test_the_fishers_subsample_and_sub_sampling_keep_each_states_own_mask() -> None:
    env = InvalidActionEnvDiscrete(dim=8, n_invalid_actions=5)
    model = MaskableTRPO("MlpPolicy", env, **SMALL)
    n = 10
    observations = th.as_tensor(np.stack([env.observation_space.sample() for _ in range(n)]), dtype=th.float32)
    masks = random_masks([8], n, np.random.default_rng(1))
    batch = masked_batch(observations, th.zeros(n), th.randn(n), masks, sub_sampling_factor=2)
    th.testing.assert_close(batch.action_masks, masks[::2])
    index = th.tensor([4, 0, 2])
    kept = batch.states(index)
    probs = kept.distribution(model.policy).distribution.probs  # type: ignore[union-attr]
    assert (probs[~masks[::2][index]] == 0).all() and (probs[masks[::2][index]] > 0).all()
    # and a run on a subsampled Fisher steps without skipping
    sampled = MaskableTRPO("MlpPolicy", env, fisher_sample_fraction=0.25, sub_sampling_factor=2, **SMALL).learn(128)
    assert sampled.skipped_updates == 0 and sampled.logger.name_to_value["train/kl_divergence_loss"] > 0


# ---------------------------------------------------------------------------------------------------- rollouts


class MaskAudit(gym.Wrapper):
    """Counts the actions taken that the env's mask of that moment forbade (per component, as sb3-contrib lays masks)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.invalid = 0
        self.steps = 0

    def step(self, action: Any) -> Any:
        mask = np.asarray(self.env.get_wrapper_attr("action_masks")(), dtype=bool)
        space = self.env.action_space
        if isinstance(space, gym.spaces.Discrete):
            chosen = [int(action)]
        else:
            sizes = list(space.nvec) if isinstance(space, gym.spaces.MultiDiscrete) else [2] * int(space.n)
            chosen = list(np.cumsum([0, *sizes[:-1]]) + np.asarray(action).astype(int))
        self.invalid += int(not mask[chosen].all())
        self.steps += 1
        return self.env.step(action)


AUDITED = {
    "Discrete": lambda: InvalidActionEnvDiscrete(dim=20, n_invalid_actions=17),
    "MultiDiscrete": lambda: InvalidActionEnvMultiDiscrete(dims=[5, 5], n_invalid_actions=7),
    "MultiBinary": lambda: InvalidActionEnvMultiBinary(dims=4, n_invalid_actions=4),
    "SlotScheduling": SlotSchedulingEnv,
}


@pytest.mark.parametrize("space", list(AUDITED))
def test_no_masked_action_is_ever_sampled_over_a_long_run(space: str) -> None:
    env = make_vec_env(AUDITED[space], n_envs=4, seed=0, wrapper_class=MaskAudit)
    MaskableTRPO("MlpPolicy", env, n_steps=250, batch_size=250, n_critic_updates=1, seed=0).learn(6_000)
    audits = env.get_attr("steps"), env.get_attr("invalid")
    assert sum(audits[0]) >= 6_000 and sum(audits[1]) == 0
    # the audit does see invalid actions: the same learner without masks takes some
    unmasked = make_vec_env(AUDITED[space], n_envs=4, seed=0, wrapper_class=MaskAudit)
    MaskableTRPO("MlpPolicy", unmasked, n_steps=250, batch_size=250, seed=0).learn(1_000, use_masking=False)
    assert sum(unmasked.get_attr("invalid")) > 0


def test_each_stored_state_keeps_the_mask_it_had_across_episode_ends() -> None:
    """In SlotScheduling the mask is a function of the observation: the buffer's masks must be that function."""
    env = make_vec_env(SlotSchedulingEnv, n_envs=3, seed=0)  # 8-step episodes: 8 resets per env in 64 steps
    model = MaskableTRPO("MlpPolicy", env, **SMALL)
    model.learn(64 * 3)
    buffer = model.rollout_buffer
    observations = buffer.observations.reshape(-1, buffer.observations.shape[-1])
    n_slots = 24
    expected = np.concatenate([(observations[:, n_slots:-1] > 0) & (observations[:, :n_slots] == 0),
                               np.ones((len(observations), 1), bool)], axis=1)  # fmt: skip
    stored = buffer.action_masks.reshape(len(observations), -1).astype(bool)
    np.testing.assert_array_equal(stored, expected)
    assert buffer.episode_starts.sum() >= 3 * 7
    actions = buffer.actions.reshape(-1).astype(int)
    assert stored[np.arange(len(actions)), actions].all()


# ---------------------------------------------------------------------------------------------------- API


def test_predict_with_masks_picks_only_valid_actions(maskable: type) -> None:
    env = InvalidActionEnvDiscrete(dim=10, n_invalid_actions=0)
    model = maskable("MlpPolicy", env, **SMALL)
    observations = np.stack([env.observation_space.sample() for _ in range(50)])
    masks = np.zeros((50, 10), dtype=bool)
    masks[np.arange(50), np.arange(50) % 10] = True
    masks[:, 3] = True
    for deterministic in (True, False):
        actions, _ = model.predict(observations, deterministic=deterministic, action_masks=masks)
        assert masks[np.arange(50), actions].all()
    unmasked, _ = model.predict(observations, deterministic=False)
    assert not masks[np.arange(50), unmasked].all()  # without masks the same policy picks others


def test_save_and_load_keep_the_masked_predictions(maskable: type, tmp_path: Any) -> None:
    env = InvalidActionEnvMultiDiscrete(dims=[3, 4], n_invalid_actions=2)
    model = maskable("MlpPolicy", env, **SMALL).learn(64)
    observations = np.stack([env.observation_space.sample() for _ in range(20)])
    masks = np.stack([np.asarray(get_action_masks(env)) for _ in range(20)])
    before, _ = model.predict(observations, deterministic=True, action_masks=masks)
    model.save(tmp_path / "model")
    loaded = maskable.load(tmp_path / "model", env=env)
    after, _ = loaded.predict(observations, deterministic=True, action_masks=masks)
    np.testing.assert_array_equal(before, after)
    assert type(loaded.policy) is type(model.policy) and loaded.max_kl == pytest.approx(model.max_kl)
    loaded.learn(64)


def test_maskable_eval_callback_with_stop_and_new_best_callbacks(maskable: type) -> None:
    """sb3-contrib's test_child_callback without MaskablePPO's n_epochs=1."""
    make = lambda: InvalidActionEnvDiscrete(dim=20, n_invalid_actions=10)  # noqa: E731
    model = maskable("MlpPolicy", make(), **SMALL)
    stop, new_best = StopTrainingOnNoModelImprovement(1, 2), EventCallback()
    callback = MaskableEvalCallback(Monitor(make()), eval_freq=64, callback_after_eval=stop, callback_on_new_best=new_best)
    model.learn(128, callback=callback)
    assert stop.n_calls == 2 and 0 < new_best.n_calls <= 2  # evaluated with masks at 64 and 128 steps
    assert callback.best_mean_reward > 0


def test_errors_name_the_fix() -> None:
    env = InvalidActionEnvDiscrete(dim=4, n_invalid_actions=1)
    with pytest.raises(ValueError, match="MaskableTRPO"):
        VineTRPO(MaskableActorCriticPolicy, env)
    with pytest.raises(ValueError, match="MaskableTRPO"):
        TRPO(MaskableActorCriticPolicy, env)
    with pytest.raises(ValueError, match="gSDE"):
        MaskableTRPO("MlpPolicy", env, use_sde=True)
    with pytest.raises(ValueError, match="float32"):
        MaskableTRPO("MlpPolicy", env, precision="bfloat16", _init_setup_model=False)._setup_model()
    model = MaskableTRPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=64, batch_size=64)
    with pytest.raises(ValueError, match="ActionMasker"):
        model.learn(64)
    model.learn(64, use_masking=False)  # no masks needed then


@pytest.mark.parametrize("key", ["trpo_mask", "natural_pg_mask"])
def test_zoo_trains_a_mask_key_on_a_masked_env_and_the_model_loads(key: str, tmp_path: Path) -> None:
    pytest.importorskip("rl_zoo3")
    root = Path(__file__).resolve().parents[1]
    args = ["--algo", key, "--env", "SlotScheduling-v0", "--gym-packages", "benchmarks.maskable", "-n", "512"]
    args += ["-f", "logs", "--seed", "0", "--num-threads", "1", "-params", "n_steps:256"]
    env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "sb3_trpo_ext.train", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    cls = {"trpo_mask": MaskableTRPO, "natural_pg_mask": MaskableNaturalPG}[key]
    model = cls.load(tmp_path / "logs" / key / "SlotScheduling-v0_1" / "SlotScheduling-v0.zip", device="cpu")
    assert model.num_timesteps >= 512 and model.n_steps == 256


# ---------------------------------------------------------------------------------------------------- learning


@pytest.mark.slow
def test_masked_identity_task_of_sb3_contrib_is_solved() -> None:
    """
    sb3-contrib's test_identity (dim 70, 55 invalid, gamma 0.1, threshold 90) without PPO's keywords: one trust-region
    step per 512 steps needs 16K steps where MaskablePPO's test gives 2K steps of 2 PPO epochs.
    """
    env = InvalidActionEnvDiscrete(dim=70, n_invalid_actions=55)
    model = MaskableTRPO("MlpPolicy", env, n_steps=512, gamma=0.1, seed=32).learn(16_384)
    evaluate_policy(model, env, n_eval_episodes=20, reward_threshold=90, warn=False)
