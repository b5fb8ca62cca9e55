"""
Every fast path computes what the generic computation computes, and the one decision function picks them.

- the NumPy MLP (:mod:`sb3_trpo_ext.common.fast_mlp`): forward, backward and forward-mode pass vs torch, for every
  activation it supports;
- the critic fit (:mod:`sb3_trpo_ext.common.critic`): ``"numpy-adam"`` vs autograd and torch Adam on the same
  mini-batches (parameters, Adam state, losses), the loss's derivative vs autograd;
- the Fisher-vector product (:mod:`sb3_trpo_ext.common.fisher`): both Gauss-Newton paths vs double back-propagation
  and vs an explicit Fisher matrix (the float64 Hessian of the mean KL), for every distribution with a closed-form
  output Fisher and for MLP, CNN and MultiInput policies;
- the decision (:func:`sb3_trpo_ext.common.backends.choose_backends`) for each policy kind, and the algorithms using it.
"""

import copy
import json
import zipfile
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import TinyCnn, TinyEnv
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from torch import nn
from torch.func import functional_call, jvp
from torch.nn import functional as F

import sb3_trpo_ext.common.base as base_module
import sb3_trpo_ext.common.natural_gradient as natural_gradient_module
from sb3_trpo_ext import TRPO, NaturalPG
from sb3_trpo_ext.common.backends import SB3_CODE, Backends, choose_backends
from sb3_trpo_ext.common.critic import NumpyAdam, critic_loss, fit_critic
from sb3_trpo_ext.common.fast_mlp import ACTIVATIONS, NumpyMlp, mlp_layers, side_by_side
from sb3_trpo_ext.common.fisher import detach_distribution, kl_per_state, make_fisher_vector_product
from sb3_trpo_ext.common.precision import bfloat16_units
from sb3_trpo_ext.common.rollout_policy import RolloutNoise, RolloutPolicy

ACTION_SPACES = {
    "gaussian": spaces.Box(-1.0, 1.0, (2,)),
    "categorical": spaces.Discrete(3),
    "multi_categorical": spaces.MultiDiscrete([3, 2]),
    "bernoulli": spaces.MultiBinary(3),
}
POLICY_KINDS = ["mlp", "cnn", "cnn_shared", "multi_input"]
N_STATES = 6


def make_policy(kind: str, action_space: spaces.Space, **kwargs) -> ActorCriticPolicy:
    """A tiny policy of the given kind (float32), with a log std that is not 1 everywhere."""
    th.manual_seed(0)
    net_arch = dict(pi=[5], vf=[5])
    if kind == "mlp":
        cls: type[ActorCriticPolicy] = ActorCriticPolicy
        obs_space: spaces.Space = spaces.Box(-1.0, 1.0, (3,))
    elif kind in ("cnn", "cnn_shared"):
        cls, obs_space = ActorCriticCnnPolicy, spaces.Box(0, 255, (1, 36, 36), np.uint8)
        kwargs = dict(
            features_extractor_class=TinyCnn,
            features_extractor_kwargs=dict(features_dim=4),
            share_features_extractor=kind == "cnn_shared",
            **kwargs,
        )
    elif kind == "multi_input":
        cls = MultiInputActorCriticPolicy
        obs_space = spaces.Dict({"vec": spaces.Box(-1.0, 1.0, (3,)), "mode": spaces.Discrete(3)})
    else:
        raise ValueError(kind)
    policy = cls(obs_space, action_space, lambda _: 1e-3, net_arch=net_arch, ortho_init=False, **kwargs)
    if hasattr(policy, "log_std"):
        with th.no_grad():
            policy.log_std.copy_(0.4 * th.randn_like(policy.log_std))
    return policy


def sample_observations(policy: ActorCriticPolicy, n: int = N_STATES):
    generator = th.Generator().manual_seed(1)
    space = policy.observation_space
    if isinstance(space, spaces.Dict):
        return {"vec": th.rand(n, 3, generator=generator) * 2 - 1, "mode": th.randint(0, 3, (n,), generator=generator).float()}
    if space.dtype == np.uint8:
        return th.randint(0, 256, (n, *space.shape), generator=generator, dtype=th.uint8)
    return th.rand(n, *space.shape, generator=generator) * 2 - 1


def actor_parameters(policy: ActorCriticPolicy) -> list[nn.Parameter]:
    """What the algorithm differentiates: the parameters the action distribution depends on (by autograd)."""
    distribution = policy.get_distribution(sample_observations(policy))
    tensors = distribution.distribution if isinstance(distribution.distribution, list) else [distribution.distribution]
    probe = sum(t.mean.sum() + t.stddev.sum() if isinstance(t, th.distributions.Normal) else t.logits.sum() for t in tensors)
    params = [p for p in policy.parameters() if p.requires_grad]
    grads = th.autograd.grad(probe, params, allow_unused=True)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]


# ---------------------------------------------------------------------------------------------------- the NumPy MLP


@pytest.fixture(params=list(ACTIVATIONS), ids=lambda cls: cls.__name__)
def mlp_policy(request: pytest.FixtureRequest) -> ActorCriticPolicy:
    th.manual_seed(0)
    env = gym.make("Pendulum-v1")
    return ActorCriticPolicy(
        env.observation_space,
        env.action_space,
        lambda _: 1e-3,
        net_arch=dict(pi=[16, 16], vf=[16, 8]),
        activation_fn=request.param,
    )


def _actor_output(policy: ActorCriticPolicy, obs: th.Tensor) -> th.Tensor:
    return policy.action_net(policy.mlp_extractor.forward_actor(obs))


def test_numpy_actor_and_critic_forward_equal_torch(mlp_policy: ActorCriticPolicy) -> None:
    obs = 3 * th.randn(7, 3)
    with th.no_grad():
        actor, critic = _actor_output(mlp_policy, obs), mlp_policy.predict_values(obs)
    for head, expected in (("actor", actor), ("critic", critic)):
        assert np.allclose(NumpyMlp(mlp_layers(mlp_policy, head))(obs.double().numpy()), expected.numpy(), atol=1e-6)


def test_side_by_side_mlp_gives_the_actor_and_critic_outputs_in_one_forward(mlp_policy: ActorCriticPolicy) -> None:
    obs = 3 * th.randn(7, 3)
    actor, critic = mlp_layers(mlp_policy, "actor"), mlp_layers(mlp_policy, "critic")
    both = side_by_side(actor, critic)  # type: ignore[arg-type]
    assert both is not None and len(both) == len(actor)  # type: ignore[arg-type]
    combined = NumpyMlp(both)(obs.numpy())
    np.testing.assert_allclose(combined[:, :-1], NumpyMlp(actor)(obs.numpy()), atol=1e-6)  # type: ignore[arg-type]
    np.testing.assert_allclose(combined[:, -1:], NumpyMlp(critic)(obs.numpy()), atol=1e-6)  # type: ignore[arg-type]
    assert side_by_side(actor, critic[:-1]) is None  # type: ignore[index,arg-type]


def test_rollout_policy_runs_the_numpy_mlp_chosen_by_the_decision(mlp_policy: ActorCriticPolicy) -> None:
    rollout = RolloutPolicy(mlp_policy, RolloutNoise.draw(mlp_policy, 4, 2), choose_backends(mlp_policy))
    assert rollout.numpy_actor is not None and rollout.numpy_critic is not None
    obs = np.random.default_rng(0).normal(size=(4, 3))
    with th.no_grad():
        expected_values = mlp_policy.predict_values(th.as_tensor(obs).float()).flatten().numpy()
        expected_mean = _actor_output(mlp_policy, th.as_tensor(obs).float()).numpy()
    assert np.allclose(rollout.values(obs), expected_values, atol=1e-6)
    actions, log_probs, values = rollout(obs, need_values=True)
    assert np.allclose(values, expected_values, atol=1e-6)
    # the closed-form sample: mean + std * noise, and its log-probability under the torch distribution
    std = th.exp(mlp_policy.log_std.detach()).numpy()
    assert np.allclose(actions, expected_mean + std * rollout.noise.at(0, None), atol=1e-5)
    with th.no_grad():
        dist = mlp_policy.get_distribution(th.as_tensor(obs).float())
        assert np.allclose(log_probs, dist.log_prob(th.as_tensor(actions)).numpy(), atol=1e-5)


def test_numpy_mlp_backward_and_jvp_equal_torch(mlp_policy: ActorCriticPolicy) -> None:
    mlp = NumpyMlp(mlp_layers(mlp_policy, "actor"))
    obs = th.randn(9, 3)
    actor = _Probe(mlp_policy, lambda policy: _actor_output(policy, obs))
    names = {id(p): f"inner.{n}" for n, p in mlp_policy.named_parameters()}
    outputs = mlp.forward(obs.numpy())
    rng = np.random.default_rng(0)
    cotangent = rng.normal(size=outputs[-1].shape).astype(np.float32)
    tangent = rng.normal(size=mlp.flat.shape).astype(np.float32)

    expected_grads = th.autograd.grad(_actor_output(mlp_policy, obs), mlp.params, th.from_numpy(cotangent))
    grad = mlp.backward(outputs, cotangent)
    assert np.allclose(grad, np.concatenate([g.reshape(-1).numpy() for g in expected_grads]), atol=1e-5)

    primals, tangents, offset = {}, {}, 0
    for p in mlp.params:
        primals[names[id(p)]] = p.detach()
        tangents[names[id(p)]] = th.from_numpy(tangent[offset : offset + p.numel()]).view_as(p)
        offset += p.numel()
    _, expected_jvp = jvp(lambda values: functional_call(actor, values, ()), (primals,), (tangents,))
    assert np.allclose(mlp.jvp(outputs, tangent), expected_jvp.numpy(), atol=1e-5)


class _Probe(nn.Module):
    """Evaluates ``fn(inner)``; ``functional_call`` on it swaps ``inner``'s parameters for given tensors."""

    def __init__(self, inner: nn.Module, fn: Callable[[nn.Module], th.Tensor]) -> None:
        super().__init__()
        self.inner = inner
        self.fn = fn

    def forward(self) -> th.Tensor:
        return self.fn(self.inner)


def test_mlp_layers_declines_what_the_numpy_mlp_does_not_compute() -> None:
    elu = make_policy("mlp", ACTION_SPACES["gaussian"], activation_fn=nn.ELU)
    assert mlp_layers(elu, "actor") is None and mlp_layers(elu, "critic") is None
    cnn = make_policy("cnn", ACTION_SPACES["gaussian"])
    assert mlp_layers(cnn, "actor") is None and mlp_layers(cnn, "critic") is None
    assert mlp_layers(make_policy("multi_input", ACTION_SPACES["gaussian"]), "critic") is None


# ---------------------------------------------------------------------------------------------------- critic fit


def test_critic_loss_derivative_equals_autograd_and_the_mse() -> None:
    values, targets = th.randn(11, dtype=th.float64, requires_grad=True), th.randn(11, dtype=th.float64)
    loss, derivative = critic_loss(values, targets)
    assert th.allclose(loss, F.mse_loss(values, targets))
    (expected,) = th.autograd.grad(loss, values)
    assert th.allclose(derivative, expected)
    np_loss, np_derivative = critic_loss(values.detach().numpy(), targets.numpy())
    assert np.isclose(np_loss, loss.item()) and np.allclose(np_derivative, expected.numpy())


def test_numpy_critic_gradient_equals_autograd(mlp_policy: ActorCriticPolicy) -> None:
    mlp = NumpyMlp(mlp_layers(mlp_policy, "critic"))
    obs, target = th.randn(32, 3), th.randn(32)
    loss = F.mse_loss(mlp_policy.predict_values(obs).flatten(), target)
    expected = th.autograd.grad(loss, mlp.params)
    outputs = mlp.forward(obs.numpy())
    np_loss, derivative = critic_loss(outputs[-1][:, 0], target.numpy())
    grad = mlp.backward(outputs, derivative[:, None])
    assert np.isclose(np_loss, loss.item(), rtol=1e-6)
    assert np.allclose(grad, np.concatenate([g.reshape(-1).numpy() for g in expected]), atol=1e-6)


def _reference_fit(policy: ActorCriticPolicy, obs: th.Tensor, returns: th.Tensor, batches: list[np.ndarray]) -> list[float]:
    """Textbook torch: autograd on the MSE and torch Adam, one step per mini-batch."""
    losses = []
    for index in batches:
        policy.optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(policy.predict_values(obs[index]).flatten(), returns[index])
        loss.backward()
        policy.optimizer.step()
        losses.append(loss.item())
    return losses


def _minibatch_indices(seed: int, n: int, batch_size: int, n_epochs: int) -> list[np.ndarray]:
    th.manual_seed(seed)
    permutations = [th.randperm(n).numpy() for _ in range(n_epochs)]
    return [permutation[s : s + batch_size] for permutation in permutations for s in range(0, n, batch_size)]


@pytest.mark.parametrize("backend", ["numpy-adam", "torch"])
def test_critic_fit_equals_torch_autograd_and_adam_over_two_fits(mlp_policy: ActorCriticPolicy, backend: str) -> None:
    reference = copy.deepcopy(mlp_policy)
    obs, returns = th.randn(200, 3), 3 * th.randn(200)
    losses, expected_losses = [], []
    for seed in (3, 4):  # the second fit continues from the Adam state the first wrote
        expected_losses += _reference_fit(reference, obs, returns, _minibatch_indices(seed, 200, 64, 3))
        th.manual_seed(seed)  # fit_critic draws the same mini-batches from torch's RNG
        losses += fit_critic(backend, mlp_policy, obs, returns, batch_size=64, n_epochs=3)  # type: ignore[arg-type]
    assert len(losses) == 24 and np.allclose(losses, expected_losses, rtol=1e-4)
    for p, q in zip(mlp_policy.parameters(), reference.parameters(), strict=True):
        assert p.dtype == th.float32 and th.allclose(p, q, atol=1e-5)
        state, ref_state = mlp_policy.optimizer.state.get(p), reference.optimizer.state.get(q)
        if ref_state is None:  # the actor: untouched, no Adam state
            assert state is None
            continue
        assert float(state["step"]) == float(ref_state["step"]) == 24
        assert th.allclose(state["exp_avg"], ref_state["exp_avg"], rtol=1e-4, atol=1e-7)
        assert th.allclose(state["exp_avg_sq"], ref_state["exp_avg_sq"], rtol=1e-4, atol=1e-9)
    # the state dict is torch Adam's: a fresh torch Adam loads it and steps on from it like the reference
    fresh = th.optim.Adam(mlp_policy.parameters(), lr=1e-3)
    fresh.load_state_dict(mlp_policy.optimizer.state_dict())
    for opt, pol in ((fresh, mlp_policy), (reference.optimizer, reference)):
        opt.zero_grad()
        F.mse_loss(pol.predict_values(obs[:32]).flatten(), returns[:32]).backward()
        opt.step()
    for p, q in zip(mlp_policy.value_net.parameters(), reference.value_net.parameters(), strict=True):
        assert th.allclose(p, q, atol=1e-5)


def test_numpy_adam_reads_the_learning_rate_and_moments_of_the_torch_optimizer(mlp_policy: ActorCriticPolicy) -> None:
    for group in mlp_policy.optimizer.param_groups:
        group["lr"] = 0.0123
    fit = NumpyAdam(NumpyMlp(mlp_layers(mlp_policy, "critic")), mlp_policy.optimizer)
    assert fit.lr == pytest.approx(0.0123) and fit.step_count == 0


@pytest.mark.parametrize("kind", ["cnn", "cnn_shared", "multi_input"])
def test_torch_critic_fit_holds_a_shared_extractor_and_the_actor_fixed(kind: str) -> None:
    policy = make_policy(kind, ACTION_SPACES["categorical"])
    actor_before = [p.detach().clone() for p in actor_parameters(policy)]
    obs = sample_observations(policy, 20)
    losses = fit_critic("torch", policy, obs, th.randn(20), batch_size=8, n_epochs=2)
    assert len(losses) == 6 and np.isfinite(losses).all()
    assert all(th.equal(p, q) for p, q in zip(actor_parameters(policy), actor_before, strict=True))


def test_critic_fit_skips_non_finite_returns(mlp_policy: ActorCriticPolicy) -> None:
    before = [p.detach().clone() for p in mlp_policy.parameters()]
    assert fit_critic("numpy-adam", mlp_policy, th.randn(8, 3), th.tensor([1.0] * 7 + [float("nan")]), 4, 1) == []
    assert all(th.equal(p, q) for p, q in zip(mlp_policy.parameters(), before, strict=True))


# ---------------------------------------------------------------------------------------------------- Fisher-vector product


def _distribution64(policy64: ActorCriticPolicy, inputs64) -> Distribution:
    """The action distribution of a float64 copy, from preprocessed float64 observations (no float32 cast)."""
    features = policy64.pi_features_extractor(inputs64)
    return policy64._get_action_dist_from_latent(policy64.mlp_extractor.forward_actor(features))


def explicit_fisher(policy: ActorCriticPolicy, obs, params: list[nn.Parameter]) -> th.Tensor:
    """The Hessian of the mean KL at the old parameters, in float64, over a flat vector of ``params``."""
    # (the policy's action_dist holds its last distribution, graph included, which deepcopy refuses)
    policy64 = copy.deepcopy(policy, memo={id(policy.action_dist): copy.copy(policy.action_dist)}).double()
    names = {id(p): n for n, p in policy.named_parameters()}
    param_names = [names[id(p)] for p in params]
    named64 = dict(policy64.named_parameters())
    inputs = preprocess_obs(obs, policy.observation_space, normalize_images=policy.normalize_images)
    inputs64 = {k: v.double() for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.double()
    old = detach_distribution(_distribution64(policy64, inputs64))
    probe = _Probe(policy64, lambda module: kl_per_state(old, _distribution64(module, inputs64)).mean())

    def mean_kl(flat: th.Tensor) -> th.Tensor:
        values, offset = {}, 0
        for name in param_names:
            numel = named64[name].numel()
            values[f"inner.{name}"] = flat[offset : offset + numel].view_as(named64[name])
            offset += numel
        # tie_weights=False: only the given names are swapped (SB3 reaches features_extractor under two names)
        return functional_call(probe, values, (), tie_weights=False)

    flat0 = th.cat([named64[name].detach().reshape(-1) for name in param_names])
    return th.autograd.functional.hessian(mean_kl, flat0, vectorize=True)


FISHER_CASES = [(kind, dist) for kind in POLICY_KINDS for dist in ACTION_SPACES]


@pytest.mark.parametrize("kind,dist", FISHER_CASES, ids=[f"{k}-{d}" for k, d in FISHER_CASES])
def test_gauss_newton_products_equal_double_backprop_and_the_explicit_fisher(kind: str, dist: str) -> None:
    policy = make_policy(kind, ACTION_SPACES[dist])
    obs = sample_observations(policy)
    params = actor_parameters(policy)
    n_params = sum(p.numel() for p in params)
    fisher = explicit_fisher(policy, obs, params)
    assert fisher.abs().max() > 1e-3 and th.linalg.eigvalsh(fisher).min() > -1e-8
    backends = ["gauss-newton", "double-backprop"] + (["numpy-gauss-newton"] if kind == "mlp" else [])
    products = {b: make_fisher_vector_product(b, policy, obs, params) for b in backends}  # type: ignore[arg-type]
    generator = th.Generator().manual_seed(5)
    for _ in range(2):
        v = th.randn(n_params, generator=generator)
        expected = fisher @ v.double()  # undamped: the damping is added where CG is called
        tolerance = dict(rtol=1e-4, atol=1e-5 * expected.abs().max().item())
        for backend, product in products.items():
            result = product(v)
            assert result.dtype == th.float32 and result.shape == (n_params,)
            assert th.allclose(result.double(), expected, **tolerance), (backend, (result.double() - expected).abs().max())
        assert th.allclose(products["gauss-newton"](v), products["double-backprop"](v), rtol=1e-4, atol=1e-6)


def test_torch_func_product_leaves_the_policy_parameters_in_place() -> None:
    # SB3's features_extractor is pi_features_extractor: functional_call on a module reachable under two names
    # would leave detached tensors in place of these parameters, and autograd would stop seeing the extractor.
    policy = make_policy("cnn_shared", ACTION_SPACES["categorical"])
    before = {n: p for n, p in policy.named_parameters()}
    obs, params = sample_observations(policy), actor_parameters(policy)
    v = th.randn(sum(p.numel() for p in params), generator=th.Generator().manual_seed(0))
    double_backprop = make_fisher_vector_product("double-backprop", policy, obs, params)(v)
    make_fisher_vector_product("gauss-newton", policy, obs, params)(v)
    after = dict(policy.named_parameters())
    assert after.keys() == before.keys() and all(after[n] is p for n, p in before.items())
    assert isinstance(policy.features_extractor.cnn[0].weight, nn.Parameter)
    assert th.equal(make_fisher_vector_product("double-backprop", policy, obs, params)(v), double_backprop)


def test_numpy_gauss_newton_handles_a_permuted_parameter_order() -> None:
    policy = make_policy("mlp", ACTION_SPACES["gaussian"])
    obs, params = sample_observations(policy), actor_parameters(policy)[::-1]
    v = th.randn(sum(p.numel() for p in params), generator=th.Generator().manual_seed(0))
    expected = make_fisher_vector_product("double-backprop", policy, obs, params)(v)
    assert th.allclose(make_fisher_vector_product("numpy-gauss-newton", policy, obs, params)(v), expected, atol=1e-5)


def test_unknown_backends_are_refused() -> None:
    policy = make_policy("mlp", ACTION_SPACES["gaussian"])
    with pytest.raises(ValueError, match="Fisher"):
        make_fisher_vector_product("hand-written", policy, sample_observations(policy), actor_parameters(policy))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="critic"):
        fit_critic("sgd", policy, sample_observations(policy), th.zeros(N_STATES), 2, 1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- the decision

FAST_MLP = Backends("fast", "numpy-mlp", "numpy-mlp", "numpy-adam", "numpy-gauss-newton")


class _CustomDistributionPolicy(ActorCriticPolicy):
    def get_distribution(self, obs):  # a policy that builds its distribution its own way
        return super().get_distribution(obs)


# convolutional policies run bfloat16 where the CPU has bfloat16 units (precision="auto")
CONV_PRECISION = "bfloat16" if bfloat16_units(th.device("cpu")) else "float32"

DECISIONS: dict[str, tuple[Callable[[], ActorCriticPolicy], Backends]] = {
    "mlp-gaussian": (lambda: make_policy("mlp", ACTION_SPACES["gaussian"]), FAST_MLP),
    **{f"mlp-{d}": (lambda d=d: make_policy("mlp", ACTION_SPACES[d]), FAST_MLP) for d in ACTION_SPACES if d != "gaussian"},
    "mlp-gsde": (
        lambda: make_policy("mlp", ACTION_SPACES["gaussian"], use_sde=True),
        Backends("fast", "torch", "numpy-mlp", "numpy-adam", "double-backprop"),
    ),
    "mlp-elu": (  # small MLPs behind a parameter-free extractor: double backprop is faster than torch.func
        lambda: make_policy("mlp", ACTION_SPACES["gaussian"], activation_fn=nn.ELU),
        Backends("fast", "torch", "torch", "torch", "double-backprop"),
    ),
    "mlp-sgd": (
        lambda: make_policy("mlp", ACTION_SPACES["categorical"], optimizer_class=th.optim.SGD),
        Backends("fast", "numpy-mlp", "numpy-mlp", "torch", "numpy-gauss-newton"),
    ),
    "mlp-amsgrad": (
        lambda: make_policy("mlp", ACTION_SPACES["categorical"], optimizer_kwargs=dict(amsgrad=True)),
        Backends("fast", "numpy-mlp", "numpy-mlp", "torch", "numpy-gauss-newton"),
    ),
    "mlp-float64": (
        lambda: make_policy("mlp", ACTION_SPACES["categorical"]).double(),
        Backends("fast", "torch", "torch", "torch", "double-backprop"),
    ),
    "mlp-custom-distribution": (
        lambda: _CustomDistributionPolicy(spaces.Box(-1.0, 1.0, (3,)), ACTION_SPACES["categorical"], lambda _: 1e-3),
        SB3_CODE,
    ),
    **{
        f"{k}-{d}": (
            lambda k=k, d=d: make_policy(k, ACTION_SPACES[d]),
            Backends("fast", "torch", "torch", "torch", "gauss-newton", CONV_PRECISION),
        )
        for k in ("cnn", "cnn_shared")
        for d in ("gaussian", "categorical")
    },
    **{
        f"multi_input-{d}": (
            lambda d=d: make_policy("multi_input", ACTION_SPACES[d]),
            Backends("fast", "torch", "torch", "torch", "double-backprop"),
        )
        for d in ("gaussian", "categorical")
    },
    "multi_input-image": (
        lambda: MultiInputActorCriticPolicy(
            spaces.Dict({"image": spaces.Box(0, 255, (1, 36, 36), np.uint8), "vec": spaces.Box(-1.0, 1.0, (3,))}),
            ACTION_SPACES["multi_categorical"],
            lambda _: 1e-3,
        ),
        Backends("fast", "torch", "torch", "torch", "gauss-newton", CONV_PRECISION),
    ),
    "cnn-gsde": (
        lambda: make_policy("cnn", ACTION_SPACES["gaussian"], use_sde=True),
        Backends("fast", "torch", "torch", "torch", "double-backprop", CONV_PRECISION),
    ),
}


@pytest.mark.parametrize("name", list(DECISIONS))
def test_choose_backends_for_each_policy_kind(name: str) -> None:
    build, expected = DECISIONS[name]
    assert choose_backends(build()) == expected


@pytest.mark.parametrize(
    "policy,observation,policy_kwargs",
    [
        ("MlpPolicy", "box", {}),
        ("CnnPolicy", "image", dict(features_extractor_class=TinyCnn, features_extractor_kwargs=dict(features_dim=8))),
        ("MultiInputPolicy", "dict", {}),
    ],
)
def test_the_algorithm_prints_and_uses_the_decision(policy, observation, policy_kwargs, capsys, monkeypatch) -> None:
    used: list[str] = []
    for module, name in ((natural_gradient_module, "make_fisher_vector_product"), (base_module, "fit_critic")):
        original = getattr(module, name)

        def spy(backend, *args, _original=original, **kwargs):
            used.append(backend)
            return _original(backend, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    env = TinyEnv(spaces.Discrete(2), observation=observation)
    model = TRPO(policy, env, n_steps=32, batch_size=16, n_critic_updates=1, policy_kwargs=policy_kwargs, verbose=1, seed=0)
    printed = capsys.readouterr().out
    assert model.backends == choose_backends(model.policy)
    assert printed.count(f"TRPO backends: {model.backends}") == 1
    model.learn(32)
    assert used == [model.backends.fisher, model.backends.critic_fit]


@pytest.mark.parametrize("algorithm", [TRPO, NaturalPG])
@pytest.mark.parametrize(
    "part,generic,tolerance",
    [("critic_fit", "torch", 1e-5), ("fisher", "double-backprop", 1e-3), ("fisher", "gauss-newton", 1e-3)],
)
def test_fast_and_generic_paths_take_the_same_step(algorithm: type, part: str, generic: str, tolerance: float) -> None:
    # One update of a plain MLP policy with one part on its fast path, then on another: the same parameter change
    # up to float32 rounding (which conjugate gradient amplifies to ~1e-4 of the actor's step; measured 1.1e-4).
    steps = []
    for override in ({}, {part: generic}):
        model = algorithm("MlpPolicy", "Pendulum-v1", n_steps=128, batch_size=32, n_critic_updates=3, seed=0)
        assert model.backends == FAST_MLP
        model.backends = model.backends._replace(**override)
        before = [p.detach().clone() for p in model.policy.parameters()]
        model.learn(128)
        steps.append(th.cat([(p.detach() - q).reshape(-1) for p, q in zip(model.policy.parameters(), before, strict=True)]))
    assert steps[0].norm() > 0
    assert (steps[0] - steps[1]).norm() <= tolerance * steps[0].norm()


def test_a_saved_model_stores_the_decision_as_plain_json_and_decides_again_on_load(tmp_path) -> None:
    # plain JSON, not a pickle of a class of this package: sb3-contrib alone can still load the zip
    model = TRPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32)
    model.save(tmp_path / "model.zip")
    data = json.loads(zipfile.ZipFile(tmp_path / "model.zip").read("data"))
    assert data["backends"] == list(model.backends)
    loaded = TRPO.load(tmp_path / "model.zip")
    assert isinstance(loaded.backends, Backends) and loaded.backends == model.backends == FAST_MLP


@pytest.mark.parametrize("backend", ["numpy-gauss-newton", "double-backprop"])
def test_natural_direction_solves_the_damped_system_and_returns_the_undamped_product(backend: str) -> None:
    # s solves (F + damping I) s = g; F s is undamped (the step length uses s^T F s); g is the surrogate's gradient
    from sb3_trpo_ext.common.natural_gradient import natural_direction
    from sb3_trpo_ext.common.policy_batch import AdvantageBatch

    policy = make_policy("mlp", ACTION_SPACES["gaussian"])
    obs = sample_observations(policy)
    with th.no_grad():
        actions = policy.get_distribution(obs).sample()
    advantages = th.randn(len(actions), generator=th.Generator().manual_seed(3))
    batch = AdvantageBatch(obs, actions, advantages)
    damping = 0.3
    found = natural_direction(policy, batch, backend, damping, cg_max_steps=100)  # type: ignore[arg-type]
    assert found.failure is None and found.direction is not None and found.fisher_direction is not None
    fisher = explicit_fisher(policy, obs, found.params)
    g, s = found.gradient.double(), found.direction.double()
    expected = th.linalg.solve(fisher + damping * th.eye(len(g), dtype=th.float64), g)
    assert th.allclose(s, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())
    assert th.allclose(found.fisher_direction.double(), fisher @ s, rtol=1e-4, atol=1e-5 * (fisher @ s).abs().max().item())
    objective, kl = found.evaluate()  # at the old parameters: the same surrogate, no KL
    assert objective == pytest.approx(found.objective, abs=1e-6) and kl == pytest.approx(0.0, abs=1e-7)
