"""
The natural-gradient engine checked against explicit matrices.

The Fisher-vector products (double back-propagation and, for plain MLP policies, the Gauss-Newton form) are compared
with an explicit Fisher built independently: the Hessian of the mean KL at the old parameters
(``torch.autograd.functional.hessian`` over a flat parameter vector, through ``torch.func.functional_call``) and, for
Gaussian and Categorical policies, the closed form ``J^T M J``. Everything runs in float64 so tolerances are tight.
"""

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    SquashedDiagGaussianDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn
from torch.func import functional_call

from sb3_trpo_ext.common.backends import choose_backends
from sb3_trpo_ext.common.fast_mlp import FlatLayout, set_flat_params
from sb3_trpo_ext.common.fisher import detach_distribution, kl_hessian_vector_product, kl_per_state, make_fisher_vector_product
from sb3_trpo_ext.common.natural_gradient import (
    apply_fixed_step,
    backtracking_line_search,
    conjugate_gradient,
    full_step_scale,
)

DTYPE = th.float64
OBS_DIM = 3
N_STATES = 5
TIGHT = dict(rtol=1e-9, atol=1e-11)


# ---------------------------------------------------------------------------------------------------- fixtures


@dataclass
class Case:
    """A tiny differentiable policy: ``distribution(module)`` depends on ``module``'s parameters ``names``."""

    module: nn.Module
    names: list[str]
    distribution: Callable[[nn.Module], Distribution]
    expected_type: type
    policy: ActorCriticPolicy | None = None
    obs: th.Tensor | None = None

    @property
    def params(self) -> list[nn.Parameter]:
        named = dict(self.module.named_parameters())
        return [named[n] for n in self.names]


def _actor_distribution(policy: ActorCriticPolicy, obs: th.Tensor) -> Distribution:
    # Same as policy.get_distribution(obs) for a FlattenExtractor on 1-D observations, but without SB3's
    # preprocess_obs, which casts observations to float32 (we want float64 end to end).
    return policy._get_action_dist_from_latent(policy.mlp_extractor.forward_actor(obs))


def _policy_case(action_space: spaces.Space, expected_type: type, use_sde: bool = False) -> Case:
    th.manual_seed(0)
    obs_space = spaces.Box(-1.0, 1.0, (OBS_DIM,))
    policy = ActorCriticPolicy(
        obs_space,
        action_space,
        lr_schedule=lambda _: 1e-3,
        net_arch=dict(pi=[4], vf=[4]),
        use_sde=use_sde,
        ortho_init=False,
    ).to(DTYPE)
    if hasattr(policy, "log_std"):  # a std that is not 1 everywhere, so diag(1 / sigma^2) matters
        with th.no_grad():
            policy.log_std.copy_(0.4 * th.randn_like(policy.log_std))
    obs = th.randn(N_STATES, OBS_DIM, dtype=DTYPE)
    names = [n for n, _ in policy.named_parameters() if not n.startswith(("value_net", "mlp_extractor.value_net"))]
    assert names and all(n.startswith(("mlp_extractor.policy_net", "action_net", "log_std")) for n in names)
    return Case(policy, names, lambda m: _actor_distribution(m, obs), expected_type, policy, obs)


class _SquashedActor(nn.Module):
    """A SAC-style actor: one linear layer giving the mean and a state-dependent log std."""

    def __init__(self, obs: th.Tensor, action_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(OBS_DIM, 2 * action_dim)
        self.obs = obs
        self.action_dist = SquashedDiagGaussianDistribution(action_dim)

    def distribution(self) -> Distribution:
        mean, log_std = th.chunk(self.linear(self.obs), 2, dim=-1)
        return self.action_dist.proba_distribution(mean, log_std)


def _squashed_case() -> Case:
    th.manual_seed(0)
    obs = th.randn(N_STATES, OBS_DIM, dtype=DTYPE)
    actor = _SquashedActor(obs, action_dim=2).to(DTYPE)
    return Case(actor, ["linear.weight", "linear.bias"], lambda m: m.distribution(), SquashedDiagGaussianDistribution)


CASE_BUILDERS: dict[str, Callable[[], Case]] = {
    "diag_gaussian": lambda: _policy_case(spaces.Box(-1.0, 1.0, (2,)), DiagGaussianDistribution),
    "squashed_gaussian": _squashed_case,
    "gsde": lambda: _policy_case(spaces.Box(-1.0, 1.0, (2,)), StateDependentNoiseDistribution, use_sde=True),
    "categorical": lambda: _policy_case(spaces.Discrete(3), CategoricalDistribution),
    "multi_categorical": lambda: _policy_case(spaces.MultiDiscrete([3, 2]), MultiCategoricalDistribution),
    "bernoulli": lambda: _policy_case(spaces.MultiBinary(3), BernoulliDistribution),
}


@pytest.fixture(params=list(CASE_BUILDERS), ids=list(CASE_BUILDERS))
def case(request: pytest.FixtureRequest) -> Case:
    built = CASE_BUILDERS[request.param]()
    assert type(built.distribution(built.module)) is built.expected_type
    return built


def _unflatten(case: Case, flat: th.Tensor) -> dict[str, th.Tensor]:
    out, offset = {}, 0
    for name, param in zip(case.names, case.params, strict=True):
        out[name] = flat[offset : offset + param.numel()].view_as(param)
        offset += param.numel()
    assert offset == flat.numel()
    return out


class _Probe(nn.Module):
    """Evaluates ``fn(inner)``; ``functional_call`` on it swaps ``inner``'s parameters for given tensors."""

    def __init__(self, inner: nn.Module, fn: Callable[[nn.Module], th.Tensor]) -> None:
        super().__init__()
        self.inner = inner
        self.fn = fn

    def forward(self) -> th.Tensor:
        return self.fn(self.inner)


def _call_with_flat(case: Case, fn: Callable[[nn.Module], th.Tensor], flat: th.Tensor) -> th.Tensor:
    swapped = {f"inner.{name}": value for name, value in _unflatten(case, flat).items()}
    return functional_call(_Probe(case.module, fn), swapped, ())


def _flat0(case: Case) -> th.Tensor:
    return th.cat([p.detach().reshape(-1) for p in case.params])


def _explicit_fisher(case: Case) -> th.Tensor:
    """Hessian of the mean KL at the old parameters, over a flat parameter vector (independent of the package's FVP)."""
    old = detach_distribution(case.distribution(case.module))

    def mean_kl_of(module: nn.Module) -> th.Tensor:
        return kl_per_state(old, case.distribution(module)).mean()

    return th.autograd.functional.hessian(lambda flat: _call_with_flat(case, mean_kl_of, flat), _flat0(case))


def _package_fvp(case: Case) -> Callable[[th.Tensor], th.Tensor]:
    dist = case.distribution(case.module)
    old = detach_distribution(dist)
    kl = kl_per_state(old, dist).mean()
    return kl_hessian_vector_product(kl, case.params)


def get_flat_params(params: Sequence[th.Tensor]) -> th.Tensor:
    """The parameters' values as one vector (a copy): the independent reading the tests compare against."""
    return th.cat([p.detach().reshape(-1) for p in params]).clone()


def _n_params(case: Case) -> int:
    return sum(p.numel() for p in case.params)


# ---------------------------------------------------------------------------------------------------- Fisher-vector product


def test_fisher_vector_product_equals_explicit_kl_hessian_times_vector(case: Case) -> None:
    fisher = _explicit_fisher(case)
    n = _n_params(case)
    assert fisher.shape == (n, n)
    assert th.allclose(fisher, fisher.T, **TIGHT)
    assert fisher.abs().max() > 1e-3  # not trivially zero
    assert th.linalg.eigvalsh(fisher).min() > -1e-10  # a Fisher matrix is positive semi-definite

    fvp = _package_fvp(case)
    th.manual_seed(1)
    for _ in range(3):
        v = th.randn(n, dtype=DTYPE)
        product = fvp(v)
        assert product.dtype == DTYPE
        assert th.allclose(product, fisher @ v, **TIGHT), (product - fisher @ v).abs().max()


def _output_jacobian(case: Case) -> th.Tensor:
    """Jacobian of the action head's output (Gaussian mean or logits), shape (batch, outputs, n_params)."""
    policy, obs = case.policy, case.obs
    assert policy is not None and obs is not None

    def head_output(module: nn.Module) -> th.Tensor:
        return module.action_net(module.mlp_extractor.forward_actor(obs))

    return th.autograd.functional.jacobian(lambda flat: _call_with_flat(case, head_output, flat), _flat0(case))


def _slot(case: Case, name: str) -> slice:
    offset = 0
    for n, p in zip(case.names, case.params, strict=True):
        if n == name:
            return slice(offset, offset + p.numel())
        offset += p.numel()
    raise KeyError(name)


def test_gaussian_fisher_equals_gauss_newton_closed_form() -> None:
    case = CASE_BUILDERS["diag_gaussian"]()
    jac = _output_jacobian(case)  # (B, A, P)
    sigma = th.exp(case.policy.log_std.detach())
    metric = th.diag_embed((1.0 / sigma**2).expand(N_STATES, -1))  # diag(1 / sigma^2) per state
    gauss_newton = th.einsum("bkp,bkl,blq->pq", jac, metric, jac) / N_STATES
    log_std = _slot(case, "log_std")
    assert gauss_newton[log_std, log_std].abs().max() == 0  # the mean does not depend on log_std
    gauss_newton[log_std, log_std] += 2.0 * th.eye(log_std.stop - log_std.start, dtype=DTYPE)

    fisher = _explicit_fisher(case)
    assert th.allclose(fisher, gauss_newton, **TIGHT)
    # no mean / log_std cross terms at the old parameters
    others = th.ones(_n_params(case), dtype=th.bool)
    others[log_std] = False
    assert fisher[log_std][:, others].abs().max() < 1e-12
    v = th.randn(_n_params(case), dtype=DTYPE, generator=th.Generator().manual_seed(3))
    assert th.allclose(_package_fvp(case)(v), gauss_newton @ v, **TIGHT)


def test_categorical_fisher_equals_gauss_newton_closed_form() -> None:
    case = CASE_BUILDERS["categorical"]()
    jac = _output_jacobian(case)  # (B, K, P)
    with th.no_grad():
        probs = th.softmax(case.policy.action_net(case.policy.mlp_extractor.forward_actor(case.obs)), dim=-1)
    metric = th.diag_embed(probs) - probs.unsqueeze(-1) * probs.unsqueeze(-2)  # diag(p) - p p^T
    gauss_newton = th.einsum("bkp,bkl,blq->pq", jac, metric, jac) / N_STATES

    fisher = _explicit_fisher(case)
    assert th.allclose(fisher, gauss_newton, **TIGHT)
    v = th.randn(_n_params(case), dtype=DTYPE, generator=th.Generator().manual_seed(4))
    assert th.allclose(_package_fvp(case)(v), gauss_newton @ v, **TIGHT)


@pytest.mark.parametrize("backend", ["numpy-gauss-newton", "gauss-newton"])
@pytest.mark.parametrize("name", ["diag_gaussian", "categorical", "multi_categorical", "bernoulli"])
def test_gauss_newton_fisher_vector_product_equals_explicit_kl_hessian(name: str, backend: str) -> None:
    # The algorithms use the NumPy Gauss-Newton path for plain MLP policies (the torch.func one for other extractors);
    # both must agree with the KL Hessian too. They compute in float32 (observations are cast like SB3's
    # preprocess_obs), so compare a float32 copy of the policy with the float64 Hessian at a float32-level tolerance.
    case = CASE_BUILDERS[name]()
    policy32 = copy.deepcopy(case.policy).float()
    assert choose_backends(policy32).fisher == "numpy-gauss-newton"
    named32 = dict(policy32.named_parameters())
    params32 = [named32[n] for n in case.names]
    fvp = make_fisher_vector_product(backend, policy32, case.obs.float(), params32)  # type: ignore[arg-type]
    fisher = _explicit_fisher(case)
    for seed in (5, 6):
        v = th.randn(_n_params(case), dtype=DTYPE, generator=th.Generator().manual_seed(seed))
        expected = fisher @ v
        assert th.allclose(fvp(v.float()).double(), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


# ---------------------------------------------------------------------------------------------------- KL


@pytest.mark.parametrize("name", list(CASE_BUILDERS))
def test_kl_is_exactly_zero_at_identical_parameters(name: str) -> None:
    case = CASE_BUILDERS[name]()
    dist = case.distribution(case.module)
    old = detach_distribution(dist)
    kl = kl_per_state(old, dist)
    assert kl.shape == (N_STATES,)
    assert th.equal(kl, th.zeros_like(kl))


def test_kl_at_identical_parameters_is_zero_up_to_rounding_and_has_zero_gradient(case: Case) -> None:
    dist = case.distribution(case.module)
    old = detach_distribution(dist)
    kl = kl_per_state(old, dist)
    assert kl.shape == (N_STATES,)
    assert kl.abs().max().item() < 1e-14
    # the KL is minimal at the old parameters: its gradient vanishes there (so F is its Hessian, and the FVP is exact)
    grads = th.autograd.grad(kl.mean(), case.params, allow_unused=True)
    assert max(g.abs().max().item() for g in grads if g is not None) < 1e-14


def test_detached_distribution_has_no_graph_and_the_same_values(case: Case) -> None:
    dist = case.distribution(case.module)
    old = detach_distribution(dist)
    assert old is not dist
    olds = old.distribution if isinstance(old.distribution, list) else [old.distribution]
    news = dist.distribution if isinstance(dist.distribution, list) else [dist.distribution]
    for o, n in zip(olds, news, strict=True):
        attrs = ("loc", "scale") if isinstance(n, th.distributions.Normal) else ("logits",)
        assert type(o) is type(n)
        for attr in attrs:
            assert getattr(n, attr).requires_grad
            assert not getattr(o, attr).requires_grad
            assert th.allclose(getattr(o, attr), getattr(n, attr).detach(), rtol=0, atol=1e-14)


def test_kl_per_state_sums_over_gaussian_action_dimensions() -> None:
    th.manual_seed(6)
    batch, dim = 4, 3
    mu0, mu1 = th.randn(batch, dim, dtype=DTYPE), th.randn(batch, dim, dtype=DTYPE)
    log_s0, log_s1 = 0.5 * th.randn(dim, dtype=DTYPE), 0.5 * th.randn(dim, dtype=DTYPE)
    old = DiagGaussianDistribution(dim).proba_distribution(mu0, log_s0)
    new = DiagGaussianDistribution(dim).proba_distribution(mu1, log_s1)
    s0, s1 = log_s0.exp(), log_s1.exp()
    by_hand = (th.log(s1 / s0) + (s0**2 + (mu0 - mu1) ** 2) / (2 * s1**2) - 0.5).sum(dim=-1)

    kl = kl_per_state(old, new)
    assert kl.shape == (batch,)
    assert th.allclose(kl, by_hand, **TIGHT)
    # sb3-contrib averages over action dimensions: its value is 1/dim of the whole-distribution KL
    contrib_style = th.distributions.kl_divergence(old.distribution, new.distribution).mean(dim=-1)
    assert th.allclose(contrib_style * dim, kl, **TIGHT)
    assert not th.allclose(contrib_style, kl)
    assert math.isclose(kl.mean().item(), by_hand.mean().item(), rel_tol=1e-12)


def test_kl_per_state_sums_over_multi_categorical_components() -> None:
    th.manual_seed(7)
    dims = [3, 2]
    logits0, logits1 = th.randn(4, 5, dtype=DTYPE), th.randn(4, 5, dtype=DTYPE)
    old = MultiCategoricalDistribution(dims).proba_distribution(logits0)
    new = MultiCategoricalDistribution(dims).proba_distribution(logits1)
    by_hand = th.zeros(4, dtype=DTYPE)
    for l0, l1 in zip(th.split(logits0, dims, -1), th.split(logits1, dims, -1), strict=True):
        p0 = th.softmax(l0, -1)
        by_hand += (p0 * (th.log_softmax(l0, -1) - th.log_softmax(l1, -1))).sum(-1)
    assert th.allclose(kl_per_state(old, new), by_hand, **TIGHT)


def test_kl_between_different_distribution_types_raises_type_error() -> None:
    gauss = DiagGaussianDistribution(2).proba_distribution(th.zeros(1, 2), th.zeros(2))
    cat = CategoricalDistribution(2).proba_distribution(th.zeros(1, 2))
    with pytest.raises(TypeError):
        kl_per_state(gauss, cat)


# ---------------------------------------------------------------------------------------------------- conjugate gradient


def _random_spd(n: int, seed: int) -> th.Tensor:
    g = th.Generator().manual_seed(seed)
    q = th.randn(n, n, dtype=DTYPE, generator=g)
    return q @ q.T + 0.5 * th.eye(n, dtype=DTYPE)


def test_conjugate_gradient_with_n_steps_solves_spd_system_exactly() -> None:
    n = 8
    a = _random_spd(n, 10)
    b = th.randn(n, dtype=DTYPE, generator=th.Generator().manual_seed(11))
    result = conjugate_gradient(lambda v: a @ v, b, max_steps=n, residual_tol=1e-20)
    expected = th.linalg.solve(a, b)
    assert th.allclose(result.solution, expected, rtol=1e-7, atol=1e-9)
    assert 1 <= result.iterations <= n
    true_residual = float(th.linalg.norm(b - a @ result.solution))
    assert result.residual_norm < 1e-6
    assert math.isclose(result.residual_norm, true_residual, abs_tol=1e-6)


def test_conjugate_gradient_reports_iterations_and_residual_when_truncated() -> None:
    n = 8
    a = _random_spd(n, 12)
    b = th.randn(n, dtype=DTYPE, generator=th.Generator().manual_seed(13))
    calls = []

    def product(v: th.Tensor) -> th.Tensor:
        calls.append(1)
        return a @ v

    result = conjugate_gradient(product, b, max_steps=3)
    assert result.iterations == 3 == len(calls)
    true_residual = float(th.linalg.norm(b - a @ result.solution))
    assert math.isclose(result.residual_norm, true_residual, rel_tol=1e-6)
    assert 0 < result.residual_norm < float(th.linalg.norm(b))  # progress, but not solved


def test_conjugate_gradient_stops_early_when_residual_is_below_tolerance() -> None:
    a = th.diag(th.tensor([2.0, 2.0, 2.0], dtype=DTYPE))  # one distinct eigenvalue: CG converges in one step
    b = th.tensor([1.0, -2.0, 3.0], dtype=DTYPE)
    result = conjugate_gradient(lambda v: a @ v, b, max_steps=10)
    assert result.iterations == 1
    assert th.allclose(result.solution, b / 2.0, **TIGHT)
    zero = conjugate_gradient(lambda v: a @ v, th.zeros(3, dtype=DTYPE), max_steps=10)
    assert zero.iterations == 0 and th.equal(zero.solution, th.zeros(3, dtype=DTYPE))


def test_conjugate_gradient_on_explicit_fisher_matches_linear_solve() -> None:
    case = CASE_BUILDERS["categorical"]()
    damping = 0.1
    fisher = _explicit_fisher(case) + damping * th.eye(_n_params(case), dtype=DTYPE)
    g = th.randn(_n_params(case), dtype=DTYPE, generator=th.Generator().manual_seed(14))
    fvp = _package_fvp(case)  # undamped: the damping is added where CG is called, as natural_direction does
    result = conjugate_gradient(lambda v: fvp(v) + damping * v, g, max_steps=200, residual_tol=1e-24)
    assert th.allclose(result.solution, th.linalg.solve(fisher, g), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------------- step scale


def test_full_step_scale_meets_quadratic_kl_model_exactly() -> None:
    fisher = _random_spd(6, 20)
    s = th.randn(6, dtype=DTYPE, generator=th.Generator().manual_seed(21))
    for target_kl in (0.01, 0.05, 1.0):
        beta = full_step_scale(s, fisher @ s, target_kl)
        assert math.isclose(0.5 * beta**2 * float(s @ fisher @ s), target_kl, rel_tol=1e-12)
        assert beta > 0


@pytest.mark.parametrize("curvature_matrix", ["negative", "zero", "nan", "inf"])
def test_full_step_scale_is_nan_for_non_positive_or_non_finite_curvature(curvature_matrix: str) -> None:
    s = th.tensor([1.0, 2.0], dtype=DTYPE)
    fs = {
        "negative": -s,
        "zero": th.zeros(2, dtype=DTYPE),
        "nan": th.tensor([float("nan"), 1.0], dtype=DTYPE),
        "inf": th.tensor([float("inf"), 1.0], dtype=DTYPE),
    }[curvature_matrix]
    assert math.isnan(full_step_scale(s, fs, 0.01))


# ---------------------------------------------------------------------------------------------------- line search


def _make_params(seed: int = 30) -> list[nn.Parameter]:
    g = th.Generator().manual_seed(seed)
    return [nn.Parameter(th.randn(3, dtype=DTYPE, generator=g)), nn.Parameter(th.randn(2, 2, dtype=DTYPE, generator=g))]


def _snapshot(params: list[nn.Parameter]) -> list[th.Tensor]:
    return [p.detach().clone() for p in params]


def _all_equal(params: list[nn.Parameter], saved: list[th.Tensor]) -> bool:
    return all(th.equal(p.detach(), s) for p, s in zip(params, saved, strict=True))


@pytest.mark.parametrize(
    "failure",
    ["worse_objective", "equal_objective", "kl_above_target", "nan_objective", "nan_kl"],
)
def test_line_search_restores_parameters_bit_for_bit_when_every_try_fails(failure: str) -> None:
    params = _make_params()
    saved = _snapshot(params)
    step = th.full((7,), 1.0 / 3.0, dtype=DTYPE)  # not representable exactly: restoring by subtraction would drift
    old_objective, target_kl = 1.0, 0.01
    seen: list[th.Tensor] = []

    def evaluate() -> tuple[float, float]:
        seen.append(get_flat_params(params))
        return {
            "worse_objective": (0.5, 0.0),
            "equal_objective": (old_objective, 0.0),
            "kl_above_target": (2.0, 0.02),
            "nan_objective": (float("nan"), 0.0),
            "nan_kl": (2.0, float("nan")),
        }[failure]

    result = backtracking_line_search(params, step, evaluate, old_objective, target_kl, 0.5, max_iter=6)
    assert not result.accepted
    assert result.line_search_iterations == 6 == len(seen)
    assert result.step_size == 0.0
    assert _all_equal(params, saved)
    # it really moved the parameters while trying, by 1, 1/2, 1/4, ... of the step
    old_flat = th.cat([s.reshape(-1) for s in saved])
    for i, flat in enumerate(seen):
        assert th.allclose(flat, old_flat + 0.5**i * step, **TIGHT)


def test_line_search_accepts_third_try_with_fraction_shrink_squared() -> None:
    params = _make_params(31)
    old_flat = get_flat_params(params)
    step = th.linspace(-1.0, 1.0, 7, dtype=DTYPE)
    shrink, target_kl = 0.7, 0.01
    outcomes = iter([(0.5, 0.0), (2.0, 0.5), (1.5, 0.004), (3.0, 0.0)])  # worse, KL too big, accepted

    result = backtracking_line_search(params, step, lambda: next(outcomes), 1.0, target_kl, shrink, max_iter=10)
    assert result.accepted
    assert result.line_search_iterations == 3
    assert math.isclose(result.step_size, shrink**2, rel_tol=1e-15)
    assert result.objective == 1.5 and result.kl == 0.004
    assert th.allclose(get_flat_params(params), old_flat + shrink**2 * step, rtol=0, atol=1e-15)


def test_line_search_accepts_full_step_when_first_try_succeeds() -> None:
    params = _make_params(32)
    old_flat = get_flat_params(params)
    step = th.ones(7, dtype=DTYPE)
    result = backtracking_line_search(params, step, lambda: (2.0, 0.01), 1.0, 0.01, 0.8, 10)  # KL == target is allowed
    assert result.accepted and result.line_search_iterations == 1 and result.step_size == 1.0
    assert th.equal(get_flat_params(params), old_flat + step)


@pytest.mark.parametrize("rescale, expected_tries", [(False, 5), (True, 2)])
def test_line_search_rescale_on_kl_aims_at_the_boundary_of_a_quadratic_kl(rescale: bool, expected_tries: int) -> None:
    # KL exactly quadratic in the step fraction f (kl = 4 delta f^2) and the surrogate always improving: the plain
    # search tries 1, 0.8, 0.64, 0.512 (KL 4, 2.56, 1.64, 1.05 delta) and accepts 0.8^4; the rescaled one jumps from
    # KL 4 delta to f = 0.98 * sqrt(1/4) = 0.49, KL 0.96 delta, accepted on the second try
    params = _make_params(34)
    old_flat = get_flat_params(params)
    step = th.linspace(-1.0, 1.0, 7, dtype=DTYPE)
    target_kl = 0.01

    def evaluate() -> tuple[float, float]:
        fraction = float((get_flat_params(params) - old_flat).norm() / step.norm())
        return 1.0 + fraction, 4.0 * target_kl * fraction**2

    result = backtracking_line_search(params, step, evaluate, 1.0, target_kl, 0.8, 10, rescale_on_kl=rescale)
    expected_fraction = 0.49 if rescale else 0.8**4
    assert result.accepted and result.line_search_iterations == expected_tries
    assert math.isclose(result.step_size, expected_fraction, rel_tol=1e-12)
    assert math.isclose(result.kl, 4.0 * target_kl * expected_fraction**2, rel_tol=1e-9)
    assert result.kl <= target_kl


def test_apply_fixed_step_restores_parameters_exactly_when_evaluate_returns_nan() -> None:
    for bad in [(float("nan"), 0.0), (1.0, float("nan")), (float("inf"), 0.0)]:
        params = _make_params(33)
        saved = _snapshot(params)
        outcome = apply_fixed_step(params, th.full((7,), 0.1, dtype=DTYPE), lambda bad=bad: bad)
        assert outcome.accepted is False and outcome.non_finite and outcome.step_size == 0.0
        assert _all_equal(params, saved)
        objective, kl = outcome.objective, outcome.kl
        assert (objective, kl) == bad or math.isnan(objective) or math.isnan(kl)


def test_apply_fixed_step_moves_parameters_by_step_when_finite() -> None:
    params = _make_params(34)
    old_flat = get_flat_params(params)
    step = th.linspace(0.0, 1.0, 7, dtype=DTYPE)
    moved = []
    outcome = apply_fixed_step(params, step, lambda: moved.append(get_flat_params(params)) or (0.3, 0.2))
    assert outcome.accepted is True and (outcome.objective, outcome.kl) == (0.3, 0.2) and not outcome.non_finite
    assert th.equal(get_flat_params(params), old_flat + step)
    assert th.equal(moved[0], old_flat + step)  # evaluated at the moved parameters


# ---------------------------------------------------------------------------------------------------- flat params


def test_set_flat_params_writes_the_layout_of_the_parameter_list() -> None:
    params = _make_params(40)
    flat = get_flat_params(params)
    assert flat.shape == (7,)
    assert th.equal(flat[:3], params[0].detach()) and th.equal(flat[3:], params[1].detach().reshape(-1))

    new = th.arange(7, dtype=DTYPE)
    set_flat_params(params, new)
    assert th.equal(get_flat_params(params), new)
    assert th.equal(params[1].detach(), th.tensor([[3.0, 4.0], [5.0, 6.0]], dtype=DTYPE))

    set_flat_params(params, flat)
    assert th.equal(get_flat_params(params), flat)


def test_flat_layout_is_torch_parameters_to_vector_layout_for_tensors_and_arrays() -> None:
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2, bias=False))
    params = list(net.parameters())
    layout = FlatLayout.of(params)
    reference = th.nn.utils.parameters_to_vector(params).detach()
    assert layout.size == reference.numel() == 3 * 4 + 4 + 4 * 2
    for part, param in zip(layout.split(reference), params, strict=True):
        assert th.equal(part, param.detach())
    for part, param in zip(layout.split(reference.numpy()), params, strict=True):
        np.testing.assert_array_equal(part, param.detach().numpy())
    slots = layout.slots(params)
    assert [slots[id(p)] for p in params] == [slice(0, 12), slice(12, 16), slice(16, 24)]

    new = th.randn(layout.size, generator=th.Generator().manual_seed(0))
    expected = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2, bias=False))
    th.nn.utils.vector_to_parameters(new, expected.parameters())
    set_flat_params(params, new.numpy())
    for mine, theirs in zip(params, expected.parameters(), strict=True):
        assert th.equal(mine.detach(), theirs.detach())


@pytest.mark.parametrize("size", [5, 8])
def test_set_flat_params_with_wrong_size_raises_value_error_and_leaves_params_unchanged(size: int) -> None:
    params = _make_params(43)
    saved = _snapshot(params)
    with pytest.raises(ValueError):
        set_flat_params(params, th.zeros(size, dtype=DTYPE))
    assert _all_equal(params, saved)
