"""
Fisher-vector products in Gauss-Newton form, ``F v = J^T M J v`` (paper, Appendix C.1), for plain MLP policies.

``J`` is the Jacobian of the network's output (Gaussian mean, or logits) with respect to the actor's parameters and
``M`` the Fisher of the action distribution with respect to that output, known in closed form:

- diagonal Gaussian with state-independent ``log_std``: ``M = diag(1 / sigma^2)`` on the mean, and the ``log_std``
  block of ``F`` is ``2 I`` (no cross terms);
- Categorical: ``M = diag(p) - p p^T`` on the logits (per sub-space for MultiCategorical);
- Bernoulli: ``M = diag(p (1 - p))`` on the logits.

At the old parameters this equals the Hessian of the mean KL that :func:`~sb3_trpo_ext.common.natural_gradient.
fisher_vector_product_fn` differentiates twice, but costs one hand-written forward-mode and one reverse-mode pass
through the MLP, with no second-order autograd graph. :func:`gauss_newton_fisher_vector_product_fn` returns ``None``
for anything it does not cover, and the caller falls back to double back-propagation.
"""

from collections.abc import Callable, Sequence

import torch as th
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_trpo_ext.common.fast_mlp import forward_cache, mlp_jvp, mlp_layers, mlp_vjp


def _output_metric(policy: ActorCriticPolicy, output: th.Tensor) -> Callable[[th.Tensor], th.Tensor] | None:
    """``u -> M u / batch`` for the policy's distribution at the network output, or ``None`` if not covered."""
    dist = policy.action_dist
    batch = len(output)
    if isinstance(dist, DiagGaussianDistribution):
        inverse_variance = th.exp(-2.0 * policy.log_std.detach()) / batch
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
        return None
    probs = th.cat([th.softmax(chunk, dim=-1) for chunk in th.split(output, splits, dim=-1)], dim=-1) / batch

    def categorical_metric(u: th.Tensor) -> th.Tensor:
        pu = probs * u
        sums = [chunk.sum(dim=-1, keepdim=True) for chunk in th.split(pu, splits, dim=-1)]
        return pu - probs * batch * th.cat([s.expand(-1, n) for s, n in zip(sums, splits, strict=True)], dim=-1)

    return categorical_metric


def gauss_newton_fisher_vector_product_fn(
    policy: ActorCriticPolicy,
    observations: th.Tensor,
    params: Sequence[th.Tensor],
    damping: float = 0.0,
) -> Callable[[th.Tensor], th.Tensor] | None:
    """
    Build ``v -> (F + damping * I) v`` in Gauss-Newton form, or return ``None`` when the policy is not covered
    (not a plain MLP actor, gSDE, Dict observations, or parameters other than the actor MLP and ``log_std``).

    :param policy: the policy, at the old parameters
    :param observations: the states the mean KL is averaged over
    :param params: the actor parameters, in the order of the flat vectors
    :param damping: Tikhonov damping (``cg_damping``)
    :return: the Fisher-vector product function, or ``None``
    """
    if policy.use_sde or not isinstance(observations, th.Tensor):
        return None
    layers = mlp_layers(policy, "actor")
    if layers is None:
        return None
    cache = forward_cache(layers, observations)
    metric = _output_metric(policy, cache[-1])
    if metric is None:
        return None

    offsets: dict[int, slice] = {}
    start = 0
    for param in params:
        offsets[id(param)] = slice(start, start + param.numel())
        start += param.numel()
    layer_slots = [(offsets.get(id(linear.weight)), offsets.get(id(linear.bias))) for linear, _ in layers]
    covered = [s for pair in layer_slots for s in pair if s is not None]
    log_std_slot = offsets.get(id(policy.log_std)) if isinstance(policy.action_dist, DiagGaussianDistribution) else None
    if log_std_slot is not None:
        covered.append(log_std_slot)
    if any(w is None for w, _ in layer_slots) or len(covered) != len(params):
        return None

    @th.no_grad()
    def fisher_vector_product(vector: th.Tensor) -> th.Tensor:
        tangents = [
            (vector[w].view_as(linear.weight), None if b is None else vector[b].view_as(linear.bias))
            for (linear, _), (w, b) in zip(layers, layer_slots, strict=True)
        ]
        grads = mlp_vjp(layers, cache, metric(mlp_jvp(layers, cache, tangents)))  # type: ignore[arg-type]
        product = damping * vector
        for (w, b), (grad_weight, grad_bias) in zip(layer_slots, grads, strict=True):
            product[w] += grad_weight.reshape(-1)  # type: ignore[index]
            if b is not None and grad_bias is not None:
                product[b] += grad_bias
        if log_std_slot is not None:
            product[log_std_slot] += 2.0 * vector[log_std_slot]
        return product

    return fisher_vector_product
