"""
The trust region's KL and its Fisher: the KL between whole action distributions (:func:`kl_per_state`, for every SB3
distribution type), the old policy's detached copy, the parameters the distribution depends on, and the
Fisher-vector product ``v -> F v`` of the step, ``F`` the analytic Fisher (the Hessian of the mean KL at the old
parameters).

The paper's trust region bounds the mean over states of ``KL(pi_old(.|s) || pi_new(.|s))`` where each KL is taken
between the *whole* action distributions. For factorised distributions (diagonal Gaussian, gSDE, Bernoulli,
MultiCategorical) that is the **sum** over action components. (sb3-contrib's TRPO averages over action dimensions
instead, which makes its trust region ``action_dim`` times looser for Gaussian policies.)

The product is undamped: the step adds its damping once, where conjugate gradient is called
(:func:`sb3_trpo_ext.common.natural_gradient.natural_direction`). Every path lives here; three of them, chosen by
:func:`sb3_trpo_ext.common.backends.choose_backends`:

- ``"gauss-newton"``: ``F v = J^T M J v`` (paper, Appendix C.1), ``J`` the Jacobian of the actor's output (Gaussian
  mean, or logits) with respect to the actor's parameters, through ``torch.func`` (``linearize`` for ``J v``, ``vjp``
  for ``J^T u``, over ``functional_call``), and ``M`` the Fisher of the action distribution with respect to that
  output, in closed form (:func:`output_metric`). Works for any features extractor, with no second-order graph;
  chosen where the extractor is learned (CNN, Dict with images), where it beats double back-propagation;
- ``"numpy-gauss-newton"``: the same product for plain MLP actors on the CPU, with the forward and reverse passes of
  :class:`~sb3_trpo_ext.common.fast_mlp.NumpyMlp` (see :func:`_numpy_gauss_newton` for the measurement that keeps it);
- ``"double-backprop"``: the Hessian of the mean KL times ``v`` by double back-propagation
  (:func:`kl_hessian_vector_product`): gSDE and any policy not covered above.
"""

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import preprocess_obs
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import nn
from torch.distributions import Bernoulli, Categorical, Normal
from torch.func import functional_call, linearize, vjp

from sb3_trpo_ext.common.fast_mlp import FlatLayout, MlpPlan, NumpyMlp, flat_grad, mlp_inputs, mlp_plan, single_threaded_blas
from sb3_trpo_ext.common.precision import Precision, mixed_precision

# ------------------------------------------------------------------ the KL between whole action distributions

SUPPORTED_DISTRIBUTIONS = (
    DiagGaussianDistribution,  # includes SquashedDiagGaussianDistribution
    StateDependentNoiseDistribution,
    CategoricalDistribution,
    MultiCategoricalDistribution,
    BernoulliDistribution,
)


def _detach_torch_distribution(dist: th.distributions.Distribution) -> th.distributions.Distribution:
    if isinstance(dist, Normal):
        return Normal(dist.loc.detach(), dist.scale.detach(), validate_args=False)
    if isinstance(dist, Categorical):
        # Keep the (already normalized) logits exactly: normalizing them again would change them by rounding, and
        # KL(old || new) at identical parameters would not be exactly 0.
        logits = dist.logits.detach()
        detached = Categorical(logits=logits, validate_args=False)
        detached.logits = detached._param = logits
        detached.__dict__.pop("probs", None)
        return detached
    if isinstance(dist, Bernoulli):
        return Bernoulli(logits=dist.logits.detach(), validate_args=False)
    raise TypeError(f"Unsupported torch distribution {type(dist).__name__}")


def detach_distribution(distribution: Distribution) -> Distribution:
    """
    A copy of an SB3 distribution whose parameters are cut from the autograd graph (the "old" policy).

    :param distribution: an SB3 distribution after ``proba_distribution``
    :return: a shallow copy holding detached torch distributions
    """
    detached = copy.copy(distribution)
    if isinstance(distribution.distribution, list):
        detached.distribution = [_detach_torch_distribution(d) for d in distribution.distribution]
    else:
        detached.distribution = _detach_torch_distribution(distribution.distribution)
    return detached


def _kl(p: th.distributions.Distribution, q: th.distributions.Distribution) -> th.Tensor:
    kl = th.distributions.kl_divergence(p, q)
    return kl.sum(dim=-1) if kl.dim() > 1 else kl


def kl_per_state(old: Distribution, new: Distribution) -> th.Tensor:
    """
    ``KL(old(.|s) || new(.|s))`` between whole action distributions, one value per state.

    :param old: the old policy's distribution on a batch of states
    :param new: the new policy's distribution on the same states
    :return: a tensor of shape ``(batch,)``
    """
    if type(old) is not type(new):
        raise TypeError(f"KL between different distribution types: {type(old).__name__} and {type(new).__name__}")
    if isinstance(old.distribution, list) and isinstance(new.distribution, list):
        return th.stack([_kl(p, q) for p, q in zip(old.distribution, new.distribution, strict=True)], dim=1).sum(dim=1)
    return _kl(old.distribution, new.distribution)  # type: ignore[arg-type]


def actor_parameters(policy: th.nn.Module, distribution: Distribution) -> list[th.nn.Parameter]:
    """
    The parameters the action distribution depends on (the actor's), found through autograd.

    :param policy: the policy
    :param distribution: its distribution on some batch (built with gradients)
    :return: the parameters with a gradient path to the distribution's tensors
    """
    params = [p for p in policy.parameters() if p.requires_grad]
    dists = distribution.distribution if isinstance(distribution.distribution, list) else [distribution.distribution]
    tensors: list[th.Tensor] = []
    for dist in dists:
        tensors += [dist.loc, dist.scale] if isinstance(dist, th.distributions.Normal) else [dist.logits]  # type: ignore[attr-defined]
    probe = th.stack([t.sum() for t in tensors]).sum()
    grads = th.autograd.grad(probe, params, retain_graph=True, allow_unused=True)
    return [p for p, g in zip(params, grads, strict=True) if g is not None]


# ------------------------------------------------------------------ the Fisher-vector products

FisherBackend = Literal["numpy-gauss-newton", "gauss-newton", "double-backprop"]
"""The Fisher-vector product's paths (chosen by :func:`~sb3_trpo_ext.common.backends.choose_backends`)."""

GAUSS_NEWTON_DISTRIBUTIONS = (
    DiagGaussianDistribution,
    CategoricalDistribution,
    MultiCategoricalDistribution,
    BernoulliDistribution,
)
"""The distributions whose Fisher with respect to the actor's output :func:`output_metric` knows."""

FisherVectorProduct = Callable[[th.Tensor], th.Tensor]


def make_fisher_vector_product(
    backend: FisherBackend,
    policy: ActorCriticPolicy,
    observations: PyTorchObs,
    params: Sequence[th.Tensor],
    distribution: Distribution | None = None,
    precision: Precision = "float32",
    state_mean: Callable[[th.Tensor], th.Tensor] = th.mean,
    plan: MlpPlan | None = None,
) -> FisherVectorProduct:
    """
    Build ``v -> F v`` at the policy's current (old) parameters.

    :param backend: the path, from :func:`~sb3_trpo_ext.common.backends.choose_backends`
    :param policy: the policy
    :param observations: the states the mean KL is averaged over
    :param params: the actor's parameters (everything the action distribution depends on), in the order of ``v``
    :param distribution: the policy's distribution on ``observations`` with its autograd graph, if at hand
        (double back-propagation reuses it under float32)
    :param precision: the number format of the network passes of the torch paths (the product is returned in
        float32; the NumPy path is float32 always)
    :param state_mean: the mean of per-state KLs over the states (double back-propagation; a recurrent batch leaves
        its padding out)
    :param plan: the policy's MLP plan (``model.mlp_plan``; default: read off the policy), for the NumPy path
    :return: the Fisher-vector product function
    """
    if backend == "gauss-newton":
        return _torch_func_gauss_newton(policy, observations, params, precision)
    if backend == "numpy-gauss-newton":
        return _numpy_gauss_newton(policy, observations, params, plan if plan is not None else mlp_plan(policy))
    if backend == "double-backprop":
        if distribution is None or precision != "float32":
            with mixed_precision(precision, policy.device):
                distribution = policy.get_distribution(observations)
        kl = state_mean(kl_per_state(detach_distribution(distribution), distribution))
        return _float32(kl_hessian_vector_product(kl, params))
    raise ValueError(f"Unknown Fisher-vector-product backend {backend!r}")


def _float32(product: FisherVectorProduct) -> FisherVectorProduct:
    return lambda vector: product(vector).float()


def kl_hessian_vector_product(mean_kl: th.Tensor, params: Sequence[th.Tensor]) -> FisherVectorProduct:
    """
    ``v -> F v`` with ``F`` the Hessian of ``mean_kl`` with respect to ``params``, by double back-propagation.

    ``mean_kl`` must be the mean KL between the (detached) old distribution and the distribution at the current
    parameters, evaluated at the old parameters: its Hessian there is the Fisher information matrix, computed
    analytically by integrating over actions (not the empirical outer-product Fisher). The first gradient is built
    once with ``create_graph=True``; each product then costs one extra backward pass.

    :param mean_kl: scalar mean KL, as a function of ``params`` through the autograd graph
    :param params: the policy parameters
    :return: the Fisher-vector product function
    """
    kl_grad = flat_grad(mean_kl, params, create_graph=True)

    def fisher_vector_product(vector: th.Tensor) -> th.Tensor:
        return flat_grad(th.dot(kl_grad, vector.detach()), params, retain_graph=True)

    return fisher_vector_product


def output_metric(policy: ActorCriticPolicy, output: th.Tensor) -> Callable[[th.Tensor], th.Tensor]:
    """
    ``u -> M u / batch``: the Fisher of the action distribution with respect to the actor's output, per state,
    averaged over the batch.

    - diagonal Gaussian (state-independent ``log_std``): ``M = diag(1 / sigma^2)`` on the mean (the ``log_std`` block
      of ``F``, ``2 I`` with no cross terms, is added by the caller);
    - Categorical: ``M = diag(p) - p p^T`` on the logits, per sub-space for MultiCategorical;
    - Bernoulli: ``M = diag(p (1 - p))`` on the logits.

    :param policy: the policy (its action distribution, and ``log_std``)
    :param output: the actor's output on the batch, shape ``(batch, n_outputs)``
    :return: the metric
    """
    dist = policy.action_dist
    batch = len(output)
    if isinstance(dist, DiagGaussianDistribution):
        inverse_variance = th.exp(-2.0 * policy.log_std.detach()).to(output.dtype) / batch
        return lambda u: u * inverse_variance
    if isinstance(dist, BernoulliDistribution):
        p = th.sigmoid(output)
        weight = p * (1.0 - p) / batch
        return lambda u: u * weight
    if isinstance(dist, CategoricalDistribution):
        splits = [output.shape[-1]]
    elif isinstance(dist, MultiCategoricalDistribution):
        splits = list(dist.action_dims)
    else:
        raise TypeError(f"No closed-form output Fisher for {type(dist).__name__}")
    probs = th.cat([th.softmax(chunk, dim=-1) for chunk in th.split(output, splits, dim=-1)], dim=-1)

    def categorical_metric(u: th.Tensor) -> th.Tensor:
        pu = probs * u
        sums = [
            chunk.sum(dim=-1, keepdim=True).expand(-1, n) for chunk, n in zip(th.split(pu, splits, -1), splits, strict=True)
        ]
        return (pu - probs * th.cat(sums, dim=-1)) / batch

    return categorical_metric


class ActorOutput(nn.Module):
    """
    The actor's output (Gaussian mean, or logits) as a function of preprocessed observations.

    Holds only the policy's actor modules, each under one name: ``functional_call`` on a module reachable under two
    names (SB3's ``features_extractor`` is ``pi_features_extractor``) restores the wrong tensors on exit and leaves
    detached copies in place of the policy's parameters.

    :param policy: the policy
    """

    def __init__(self, policy: ActorCriticPolicy) -> None:
        super().__init__()
        self.features_extractor = policy.pi_features_extractor
        self.mlp_extractor = policy.mlp_extractor
        self.action_net = policy.action_net

    def forward(self, observations: PyTorchObs) -> th.Tensor:
        return self.action_net(self.mlp_extractor.forward_actor(self.features_extractor(observations)))


def _log_std(policy: ActorCriticPolicy) -> th.Tensor | None:
    return policy.log_std if isinstance(policy.action_dist, DiagGaussianDistribution) else None


def _torch_func_gauss_newton(
    policy: ActorCriticPolicy, observations: PyTorchObs, params: Sequence[th.Tensor], precision: Precision = "float32"
) -> FisherVectorProduct:
    """
    ``J^T M J v`` through ``torch.func``.

    ``J v`` comes from ``linearize`` (the forward-mode pass traced once at the old parameters) rather than ``jvp``,
    which runs the primal forward again at every product; the trace costs ~50 ms of Python per build, which only
    pays where the products are expensive: on a CNN actor it beats ``jvp`` and double back-propagation, on small MLPs
    double back-propagation is faster (``benchmarks/fisher_paths.py --cnn`` times the paths against each other), so
    :func:`~sb3_trpo_ext.common.backends.choose_backends` picks this path only for actors with a learned features
    extractor.
    """
    actor = ActorOutput(policy)
    names = {id(p): name for name, p in actor.named_parameters()}
    log_std = _log_std(policy)
    slots = FlatLayout.of(params).slots(params)
    network = [p for p in params if p is not log_std]
    missing = [p for p in network if id(p) not in names]
    if missing:
        raise RuntimeError(f"{len(missing)} actor parameter(s) outside the actor's modules: use double-backprop")
    primals = {names[id(p)]: p.detach() for p in network}
    inputs = preprocess_obs(observations, policy.observation_space, normalize_images=policy.normalize_images)

    def actor_output(values: dict[str, th.Tensor]) -> th.Tensor:
        with mixed_precision(precision, policy.device):
            return functional_call(actor, values, (inputs,)).float()

    with warnings.catch_warnings():  # torch.fx's constant folding warns about its own attributes
        warnings.simplefilter("ignore", UserWarning)
        output, output_jvp = linearize(actor_output, primals)
    output_vjp = vjp(actor_output, primals)[1]
    metric = output_metric(policy, output.detach())
    log_std_slot = slots[id(log_std)] if log_std is not None and id(log_std) in slots else None

    def fisher_vector_product(vector: th.Tensor) -> th.Tensor:
        vector = vector.detach()
        tangents = {names[id(p)]: vector[slots[id(p)]].view_as(p) for p in network}
        (grads,) = output_vjp(metric(output_jvp(tangents)))
        product = th.zeros_like(vector)
        for p in network:
            product[slots[id(p)]] += grads[names[id(p)]].reshape(-1).to(product.dtype)
        if log_std_slot is not None:
            product[log_std_slot] += 2.0 * vector[log_std_slot]
        return product

    return fisher_vector_product


def _numpy_gauss_newton(
    policy: ActorCriticPolicy, observations: PyTorchObs, params: Sequence[th.Tensor], plan: MlpPlan
) -> FisherVectorProduct:
    """
    ``J^T M J v`` with :class:`~sb3_trpo_ext.common.fast_mlp.NumpyMlp`'s ``jvp`` and ``backward`` (a forward pass at
    the old parameters, then one forward-mode and one reverse-mode pass per product).

    Kept because it is faster than ``torch.func`` and double back-propagation on small MLPs, where per-call overhead
    dominates (``benchmarks/fisher_paths.py`` times the paths on a Hopper-sized actor).
    """
    assert plan.actor is not None, "the numpy-gauss-newton product needs a plain MLP actor"
    mlp = NumpyMlp(plan.actor)
    log_std = _log_std(policy)
    slots = FlatLayout.of(params).slots(params)
    if {id(p) for p in params} != {id(p) for p in mlp.params} | ({id(log_std)} if log_std is not None else set()):
        raise RuntimeError("The actor's parameters are not its MLP's (and log_std): the product needs another backend")
    index = np.concatenate([np.arange(slots[id(p)].start, slots[id(p)].stop) for p in mlp.params])
    mlp_part: slice | th.Tensor = th.from_numpy(index)
    if np.array_equal(index, np.arange(index[0], index[0] + len(index))):
        mlp_part = slice(int(index[0]), int(index[0]) + len(index))  # the usual layout: a view, no gather
    with single_threaded_blas():
        outputs = mlp.forward(mlp_inputs(observations, plan.input_keys))
    metric = output_metric(policy, th.from_numpy(outputs[-1]))
    log_std_slot = slots[id(log_std)] if log_std is not None and id(log_std) in slots else None

    def fisher_vector_product(vector: th.Tensor) -> th.Tensor:
        vector = vector.detach()
        with single_threaded_blas():
            output_tangent = mlp.jvp(outputs, vector[mlp_part].numpy())
            grad = mlp.backward(outputs, metric(th.from_numpy(output_tangent)).numpy())
        product = th.zeros_like(vector)
        product[mlp_part] += th.from_numpy(grad)
        if log_std_slot is not None:
            product[log_std_slot] += 2.0 * vector[log_std_slot]
        return product

    return fisher_vector_product
