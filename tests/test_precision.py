"""
The fast Atari path: mixed precision decided once (``model.backends.precision``), image observations normalized once
per update, and the paper's Atari network. What must hold: the normalization changes no bit of an update; bfloat16
is used only where it was decided and never for the trust region itself (the measured KL of an accepted step is the
float32 KL between the old and new policy); the paper's network has the paper's layout.
"""

from typing import Any

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy
from stable_baselines3.common.torch_layers import NatureCNN

import sb3_trpo_ext.common.base as base_module
from sb3_trpo_ext import TRPO
from sb3_trpo_ext.common.backends import choose_backends
from sb3_trpo_ext.common.fast_mlp import set_flat_params
from sb3_trpo_ext.common.fisher import make_fisher_vector_product
from sb3_trpo_ext.common.natural_gradient import STEP_CHUNK_SIZE, natural_direction
from sb3_trpo_ext.common.policy_batch import AdvantageBatch
from sb3_trpo_ext.common.precision import bfloat16_units
from sb3_trpo_ext.common.preprocessing import channels_last_safe, images_normalized_once
from sb3_trpo_ext.common.torch_layers import TRPOAtariCNN
from sb3_trpo_ext.maskable.batch import MaskedAdvantageBatch, masked_batch
from tests.conftest import TINY_CNN_KWARGS, TinyEnv

HAS_BF16 = bfloat16_units(th.device("cpu"))
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bfloat16 units (avx512_bf16 or AMX)")


def image_policy(**kwargs: Any) -> ActorCriticCnnPolicy:
    th.manual_seed(0)
    return ActorCriticCnnPolicy(
        spaces.Box(0, 255, (3, 36, 36), np.uint8), spaces.Discrete(3), lambda _: 1e-3, **TINY_CNN_KWARGS, **kwargs
    )


def image_batch(n: int = 32) -> th.Tensor:
    return th.randint(0, 256, (n, 3, 36, 36), generator=th.Generator().manual_seed(1)).float()


def image_model(**kwargs: Any) -> TRPO:
    env = make_vec_env(lambda: TinyEnv(observation="image"), n_envs=2, seed=0)
    return TRPO(
        "CnnPolicy", env, n_steps=64, batch_size=32, n_critic_updates=2, policy_kwargs=TINY_CNN_KWARGS, seed=0, **kwargs
    )


# ---------------------------------------------------------------------------------------------------- normalization


def test_images_normalized_once_gives_the_same_logits_bit_for_bit() -> None:
    policy, obs = image_policy(), image_batch()
    with th.no_grad():
        expected = policy.get_distribution(obs).distribution.logits
        with images_normalized_once(policy, enabled=True) as normalize:
            assert policy.normalize_images is False
            inside = policy.get_distribution(normalize(obs)).distribution.logits
            values_inside = policy.predict_values(normalize(obs))
        assert policy.normalize_images is True
        assert th.equal(inside, expected)
        assert th.equal(values_inside, policy.predict_values(obs))


def test_images_normalized_once_restores_the_policy_after_an_error() -> None:
    policy = image_policy()
    with pytest.raises(RuntimeError, match="boom"):
        with images_normalized_once(policy, enabled=True):
            raise RuntimeError("boom")
    assert policy.normalize_images is True


def test_images_normalized_once_normalizes_each_tensor_once() -> None:
    policy, obs = image_policy(), image_batch()
    with images_normalized_once(policy, enabled=True) as normalize:
        first = normalize(obs)
        assert normalize(obs) is first
        assert th.equal(first, obs / 255.0)


@pytest.mark.parametrize("case", ["vector", "disabled", "not-normalizing"])
def test_images_normalized_once_leaves_other_policies_alone(case: str) -> None:
    if case == "vector":
        policy: ActorCriticPolicy = ActorCriticPolicy(spaces.Box(-1, 1, (3,)), spaces.Discrete(2), lambda _: 1e-3)
        obs = th.zeros(4, 3)
    else:
        policy, obs = image_policy(normalize_images=case != "not-normalizing"), image_batch()
    before = policy.normalize_images
    with images_normalized_once(policy, enabled=case != "disabled") as normalize:
        assert normalize(obs) is obs
        assert policy.normalize_images is before


def test_an_update_is_bit_identical_with_and_without_the_single_normalization(monkeypatch: pytest.MonkeyPatch) -> None:
    def learned(normalize_once: bool) -> list[th.Tensor]:
        if not normalize_once:
            original = images_normalized_once
            monkeypatch.setattr(
                base_module, "images_normalized_once", lambda policy, enabled=True, **_: original(policy, False)
            )
        model = image_model(precision="float32").learn(256)
        monkeypatch.undo()
        return [p.detach().clone() for p in model.policy.parameters()]

    once, every_call = learned(True), learned(False)
    assert all(th.equal(a, b) for a, b in zip(once, every_call, strict=True))


def nature_policy() -> ActorCriticPolicy:
    return ActorCriticPolicy(
        spaces.Box(0, 255, (4, 36, 36), np.uint8),
        spaces.Discrete(3),
        lambda _: 1e-3,
        features_extractor_class=NatureCNN,
        features_extractor_kwargs=dict(features_dim=16),
        share_features_extractor=False,
    )


def test_channels_last_only_for_extractors_that_take_any_layout() -> None:
    assert channels_last_safe(nature_policy())
    assert not channels_last_safe(image_policy())  # a user's extractor might .view() a conv output
    policy, obs = nature_policy(), th.randint(0, 256, (8, 4, 36, 36)).float()
    with th.no_grad():
        expected = policy.get_distribution(obs).distribution.logits
        with images_normalized_once(policy, channels_last=True) as normalize:
            normalized = normalize(obs)
            assert normalized.is_contiguous(memory_format=th.channels_last) and not normalized.is_contiguous()
            assert th.equal(normalized, obs / 255.0)  # the same values, another layout
            logits = policy.get_distribution(normalized).distribution.logits
            values = policy.predict_values(normalized)
    assert th.allclose(logits, expected, atol=1e-5) and th.allclose(values, policy.predict_values(obs), atol=1e-5)


def test_a_model_with_nature_cnn_updates_on_channels_last_frames() -> None:
    env = make_vec_env(lambda: TinyEnv(observation="image"), n_envs=2, seed=0)
    kwargs = dict(features_extractor_class=NatureCNN, features_extractor_kwargs=dict(features_dim=16))
    model = TRPO("CnnPolicy", env, n_steps=64, batch_size=32, n_critic_updates=2, policy_kwargs=kwargs, seed=0)
    assert model._images_channels_last
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(128)
    assert any(not th.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True))
    assert model.logger.name_to_value["train/is_line_search_success"] in (0.0, 1.0)


# ---------------------------------------------------------------------------------------------------- precision


def test_precision_is_decided_once_from_the_policy_and_the_hardware() -> None:
    conv = choose_backends(image_policy())
    mlp = choose_backends(ActorCriticPolicy(spaces.Box(-1, 1, (3,)), spaces.Discrete(2), lambda _: 1e-3))
    assert conv.precision == ("bfloat16" if HAS_BF16 else "float32")
    assert mlp.precision == "float32"  # MLPs run their NumPy paths: nothing to gain
    assert choose_backends(image_policy(), "float32").precision == "float32"
    assert "mixed precision" in str(conv)


def test_precision_keyword_is_checked_and_kept() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        image_model(precision="fp16")
    model = image_model(precision="float32")
    assert model.backends.precision == "float32"


def test_bfloat16_on_a_cpu_without_the_units_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(th.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(th.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(ValueError, match="needs a device that computes bfloat16"):
        image_model(precision="bfloat16")
    assert image_model().backends.precision == "float32"  # auto falls back


@needs_bf16
def test_bfloat16_fisher_product_is_close_to_float32() -> None:
    policy, obs = image_policy(), image_batch(64) / 255.0
    params = [p for name, p in policy.named_parameters() if "value" not in name and "vf_" not in name]
    params = [p for p in params if p.requires_grad]
    policy.normalize_images = False
    vector = th.randn(sum(p.numel() for p in params), generator=th.Generator().manual_seed(2))
    exact = make_fisher_vector_product("gauss-newton", policy, obs, params, None, "float32")(vector)
    low = make_fisher_vector_product("gauss-newton", policy, obs, params, None, "bfloat16")(vector)
    assert low.dtype == th.float32
    assert th.linalg.norm(low - exact) / th.linalg.norm(exact) < 0.05


@needs_bf16
def test_bfloat16_changes_the_fisher_product_less_than_another_subsample_of_states() -> None:
    policy, obs = image_policy(), image_batch(256) / 255.0
    params = [p for name, p in policy.named_parameters() if "value" not in name and "vf_" not in name and p.requires_grad]
    policy.normalize_images = False
    vector = th.randn(sum(p.numel() for p in params), generator=th.Generator().manual_seed(3))

    def product(states: th.Tensor, precision: str) -> th.Tensor:
        return make_fisher_vector_product("gauss-newton", policy, states, params, None, precision)(vector)  # type: ignore[arg-type]

    first, second = obs[:26], obs[26:52]  # two 10% subsamples of the batch
    rounding = th.linalg.norm(product(first, "bfloat16") - product(first, "float32"))
    sampling = th.linalg.norm(product(second, "float32") - product(first, "float32"))
    assert rounding < 0.5 * sampling


@needs_bf16
def test_the_trust_region_is_measured_in_float32_under_bfloat16() -> None:
    model = image_model(precision="bfloat16", target_kl=0.005)
    assert model.backends.precision == "bfloat16"
    model.learn(128)  # one update, then a second rollout whose update we check
    old = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(128, reset_num_timesteps=False)
    obs = next(model.rollout_buffer.get(batch_size=None)).observations
    with th.no_grad():  # SB3 reuses one distribution object per policy: keep the log-probabilities themselves
        new_log_p = model.policy.get_distribution(obs).distribution.logits.clone()
        for p, value in zip(model.policy.parameters(), old, strict=True):
            p.copy_(value)
        old_log_p = model.policy.get_distribution(obs).distribution.logits.clone()
    kl = float((old_log_p.exp() * (old_log_p - new_log_p)).sum(-1).mean())  # the categorical KL by hand
    logged = model.logger.name_to_value["train/kl_divergence_loss"]
    assert model.logger.name_to_value["train/is_line_search_success"] == 1.0
    assert kl > 0.0
    assert kl == pytest.approx(logged, rel=1e-4)
    assert kl <= model.max_kl * (1 + 1e-5)


# ---------------------------------------------------------------------------------------------------- the paper's CNN


def test_trpo_atari_cnn_has_the_papers_layout() -> None:
    extractor = TRPOAtariCNN(spaces.Box(0, 255, (4, 84, 84), np.uint8))
    convs = [m for m in extractor.modules() if isinstance(m, th.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (16, (4, 4), (2, 2), (0, 0)),
        (16, (4, 4), (2, 2), (1, 1)),
    ]
    assert extractor.features_dim == 20
    assert extractor(th.zeros(2, 4, 84, 84)).shape == (2, 20)
    assert sum(p.numel() for p in extractor.parameters()) == 1040 + 4112 + (16 * 20 * 20 * 20 + 20)
    assert all(isinstance(m, (th.nn.Tanh,)) for m in extractor.modules() if isinstance(m, (th.nn.ReLU, th.nn.Tanh)))


def test_trpo_atari_cnn_refuses_vector_observations() -> None:
    with pytest.raises(ValueError, match="needs image observations"):
        TRPOAtariCNN(spaces.Box(-1, 1, (4, 8, 8), np.float32))


def test_trpo_trains_with_the_papers_cnn_and_the_zoo_string_names_it() -> None:
    from sb3_trpo_ext.zoo.checks import _eval_zoo_string

    kwargs = _eval_zoo_string("dict(features_extractor_class=TRPOAtariCNN, share_features_extractor=False)")
    assert kwargs["features_extractor_class"] is TRPOAtariCNN
    env = make_vec_env(lambda: TinyEnv(observation="image"), n_envs=2, seed=0)
    model = TRPO("CnnPolicy", env, n_steps=32, batch_size=32, n_critic_updates=1, policy_kwargs=kwargs, seed=0)
    before = [p.detach().clone() for p in model.policy.pi_features_extractor.parameters()]
    model.learn(64)
    assert isinstance(model.policy.pi_features_extractor, TRPOAtariCNN)
    assert any(not th.equal(a, b) for a, b in zip(before, model.policy.pi_features_extractor.parameters(), strict=True))


# ---------------------------------------------------------------------------------------------------- pieces


def chunk_inputs(n: int = 96) -> tuple[ActorCriticPolicy, AdvantageBatch]:
    policy = nature_policy()
    generator = th.Generator().manual_seed(2)
    observations = th.randint(0, 256, (n, 4, 36, 36), generator=generator).float() / 255.0
    actions = th.randint(0, 3, (n,), generator=generator)
    return policy, AdvantageBatch.from_rollout(observations, actions, th.randn(n, generator=generator))


@pytest.mark.parametrize("backend", ["gauss-newton", "double-backprop"])
def test_the_step_over_pieces_computes_what_the_whole_batch_does(backend: str) -> None:
    policy, batch = chunk_inputs()
    policy.normalize_images = False  # the frames are already in [0, 1]
    params = list(policy.pi_features_extractor.parameters()) + list(policy.action_net.parameters())
    whole = natural_direction(policy, batch, backend, 0.1, 10, params=params)  # type: ignore[arg-type]
    pieces = natural_direction(policy, batch, backend, 0.1, 10, params=params, chunk_size=40)  # 40 + 40 + 16 states
    assert whole.direction is not None and pieces.direction is not None
    assert pieces.objective == pytest.approx(whole.objective, rel=1e-5, abs=1e-7)
    th.testing.assert_close(pieces.gradient, whole.gradient, rtol=1e-4, atol=1e-6)
    th.testing.assert_close(pieces.direction, whole.direction, rtol=1e-3, atol=1e-5)
    old = th.cat([p.detach().reshape(-1) for p in params])
    set_flat_params(params, old + 0.5 * whole.direction / whole.direction.norm())  # a step, measured both ways
    assert whole.evaluate is not None and pieces.evaluate is not None
    (objective, kl), (objective_pieces, kl_pieces) = whole.evaluate(), pieces.evaluate()
    assert kl > 1e-4 and kl_pieces == pytest.approx(kl, rel=1e-4)
    assert objective_pieces == pytest.approx(objective, rel=1e-4, abs=1e-6)


def test_pieces_keep_every_field_and_weigh_by_their_states() -> None:
    _, batch = chunk_inputs(10)
    masks = th.rand(10, 3, generator=th.Generator().manual_seed(3)) > 0.3
    masked = masked_batch(batch.observations, batch.actions, batch.advantages, masks, normalize_advantage=False)
    pieces = masked.chunks(4)
    assert [len(piece.actions) for piece, _ in pieces] == [4, 4, 2]
    assert [weight for _, weight in pieces] == [0.4, 0.4, 0.2]
    assert all(isinstance(piece, MaskedAdvantageBatch) for piece, _ in pieces)
    th.testing.assert_close(th.cat([piece.action_masks for piece, _ in pieces]), masked.action_masks)  # type: ignore[attr-defined]
    th.testing.assert_close(th.cat([piece.advantages for piece, _ in pieces]), masked.advantages)  # type: ignore[attr-defined]


def test_only_stock_image_policies_on_the_cpu_step_over_pieces() -> None:
    env = make_vec_env(lambda: TinyEnv(observation="image"), n_envs=2, seed=0)
    kwargs = dict(features_extractor_class=NatureCNN, features_extractor_kwargs=dict(features_dim=16))
    assert TRPO("CnnPolicy", env, policy_kwargs=kwargs)._step_chunk_size == STEP_CHUNK_SIZE
    assert image_model()._step_chunk_size is None  # a user's extractor: one pass, as its author wrote it
    assert TRPO("MlpPolicy", "Pendulum-v1")._step_chunk_size is None
