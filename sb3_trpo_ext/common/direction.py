"""
The natural-gradient direction of a batch: the first half of every update of the family, as one pure function.

:func:`natural_direction` takes a :class:`~sb3_trpo_ext.common.policy_batch.PolicyBatch` and the policy at its old
parameters and returns the surrogate's gradient ``g``, the conjugate-gradient solution ``s`` of
``(F + damping I) s = g`` (the only place the damping is added), the undamped ``F s`` (for the step length
``s^T F s``), and a function that measures the surrogate and the mean KL at whatever parameters the policy holds,
which the step rules call (:func:`~sb3_trpo_ext.common.natural_gradient.backtracking_line_search`,
:func:`~sb3_trpo_ext.common.natural_gradient.apply_fixed_step`). ``NaturalGradientAlgorithm`` takes its step from
it and ``benchmarks/vine_study/`` measures gradient quality with it.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch as th
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_trpo_ext.common.distributions import actor_parameters, detach_distribution, kl_per_state
from sb3_trpo_ext.common.fast_mlp import MlpPlan
from sb3_trpo_ext.common.fisher import FisherBackend, make_fisher_vector_product
from sb3_trpo_ext.common.natural_gradient import conjugate_gradient, flat_grad
from sb3_trpo_ext.common.policy_batch import PolicyBatch
from sb3_trpo_ext.common.precision import Precision


@dataclass
class NaturalDirection:
    """What :func:`natural_direction` found."""

    params: list[th.Tensor]
    """The actor's parameters, in the order of the vectors."""
    objective: float
    """The surrogate at the old parameters."""
    gradient: th.Tensor
    """``g``, the surrogate's gradient."""
    direction: th.Tensor | None = None
    """``s ~ (F + damping I)^-1 g`` (``None`` when ``failure``)."""
    fisher_direction: th.Tensor | None = None
    """``F s``, undamped."""
    evaluate: Callable[[], tuple[float, float]] | None = None
    """``(surrogate, mean KL to the old policy)`` at the policy's current parameters."""
    diagnostics: dict[str, float] = field(default_factory=dict)
    failure: str | None = None
    """Why no direction could be found (non-finite gradient or solution); the step is then skipped."""


def natural_direction(
    policy: ActorCriticPolicy,
    batch: PolicyBatch,
    fisher_backend: FisherBackend,
    damping: float,
    cg_max_steps: int,
    fisher_sample_fraction: float = 1.0,
    params: Sequence[th.Tensor] | None = None,
    precision: Precision = "float32",
    plan: MlpPlan | None = None,
) -> NaturalDirection:
    """
    :param policy: the policy, at the old parameters
    :param batch: the samples and their surrogate
    :param fisher_backend: the Fisher-vector product's path (``model.backends.fisher``)
    :param damping: added to the Fisher for conjugate gradient
    :param cg_max_steps: conjugate-gradient iterations
    :param fisher_sample_fraction: the share of the batch the Fisher is averaged over (a random subsample)
    :param params: the actor's parameters (default: found from the policy's distribution)
    :param precision: the number format of the Fisher products' network passes (everything else is float32)
    :param plan: the policy's MLP plan (``model.mlp_plan``), for the NumPy Fisher path
    :return: the direction, or the reason there is none
    """
    distribution = batch.distribution(policy)
    old_distribution = detach_distribution(distribution)
    log_prob = distribution.log_prob(batch.actions)
    old_log_prob = log_prob.detach()
    params = list(params) if params is not None else list(actor_parameters(policy, distribution))
    objective = batch.surrogate(log_prob, old_log_prob)
    gradient = flat_grad(objective, params, retain_graph=True)
    found = NaturalDirection(params=params, objective=float(objective.item()), gradient=gradient)
    if not (batch.is_finite() and th.isfinite(gradient).all()):
        found.failure = "non-finite advantages or gradient"
        return found

    fisher_batch, n_samples = batch, len(batch.actions)
    n_fisher = max(1, round(fisher_sample_fraction * n_samples))
    fisher_distribution: Distribution | None = distribution
    if n_fisher < n_samples:
        fisher_batch = batch.states(th.randperm(n_samples, device=gradient.device)[:n_fisher])
        fisher_distribution = None
    if fisher_backend == "double-backprop" and fisher_distribution is None and precision == "float32":
        fisher_distribution = fisher_batch.distribution(policy)
    fisher = make_fisher_vector_product(
        fisher_backend,
        policy,
        fisher_batch.observations,
        params,
        fisher_distribution,
        precision,
        fisher_batch.state_mean,
        plan,
    )
    cg = conjugate_gradient(lambda v: fisher(v) + damping * v, gradient, cg_max_steps)
    found.diagnostics = {"cg_residual": cg.residual_norm, "cg_iterations": float(cg.iterations)}
    if not th.isfinite(cg.solution).all():
        found.failure = "non-finite conjugate-gradient solution"
        return found
    found.direction, found.fisher_direction = cg.solution, fisher(cg.solution)

    def evaluate() -> tuple[float, float]:
        with th.no_grad():
            new_distribution = batch.distribution(policy)
            new_objective = batch.surrogate(new_distribution.log_prob(batch.actions), old_log_prob)
            kl = batch.state_mean(kl_per_state(old_distribution, new_distribution))
        return float(new_objective.item()), float(kl.item())

    found.evaluate = evaluate
    return found
