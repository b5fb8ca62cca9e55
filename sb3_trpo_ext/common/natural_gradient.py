"""
The natural-gradient step shared by the whole family, in the paper's order (Schulman et al. 2015, Section 6 and
Appendix C), as functions over explicit arguments (no ``self``):

1. the surrogate ``L`` of a :class:`~sb3_trpo_ext.common.policy_batch.PolicyBatch` and its gradient ``g``
   (:func:`~sb3_trpo_ext.common.fast_mlp.flat_grad`);
2. the direction: ``s ~ (F + damping I)^-1 g`` by :func:`conjugate_gradient` on the undamped Fisher-vector product
   of :mod:`~sb3_trpo_ext.common.fisher` (:func:`natural_direction`: steps 1 and 2, also used by the vine study);
3. the step length ``beta = sqrt(2 delta / s^T F s)`` (:func:`full_step_scale`);
4. the step rule, a :class:`StepRule`: :class:`LineSearch` (TRPO: :func:`backtracking_line_search`, which restores the
   parameters bit for bit when every try fails) or :class:`FixedStep` (NaturalPG: :func:`apply_fixed_step`).

:func:`natural_gradient_step` runs the four; every step, rule and skip says what it did in one type,
:class:`StepOutcome`. The pure pieces are checked against explicit matrices in ``tests/test_natural_gradient.py``.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch as th
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy

from sb3_trpo_ext.common.fast_mlp import MlpPlan, flat_grad, set_flat_params
from sb3_trpo_ext.common.fisher import (
    FisherBackend,
    FisherVectorProduct,
    actor_parameters,
    detach_distribution,
    kl_per_state,
    make_fisher_vector_product,
)
from sb3_trpo_ext.common.policy_batch import PolicyBatch
from sb3_trpo_ext.common.precision import Precision
from sb3_trpo_ext.common.user_warnings import warn_at_user_call

__all__ = [
    "ConjugateGradientResult",
    "FixedStep",
    "LineSearch",
    "Measure",
    "NaturalDirection",
    "STEP_CHUNK_SIZE",
    "StepOutcome",
    "StepRule",
    "StepSettings",
    "apply_fixed_step",
    "backtracking_line_search",
    "conjugate_gradient",
    "flat_grad",
    "full_step_scale",
    "natural_direction",
    "natural_gradient_step",
]

STEP_CHUNK_SIZE = 256
"""States per pass of the surrogate's gradient and measures on image batches on the CPU (``model._step_chunk_size``):
one NatureCNN pass over 4,096 frames and back took 3.8 s on one core, 16 passes of 256 frames 2.4 s."""

Measure = Callable[[], tuple[float, float]]
"""Measures ``(surrogate, mean KL to the old policy)`` at the parameters the policy holds now."""


@dataclass
class StepOutcome:
    """What a natural-gradient step did: the one result type of :func:`natural_gradient_step` and its step rules."""

    accepted: bool
    """Whether the parameters moved."""
    objective: float
    """The surrogate at the final parameters (the old one when nothing was accepted)."""
    kl: float
    """The mean KL at the final parameters (0 when nothing was accepted)."""
    step_size: float
    """The multiple of the direction ``s`` taken (of the full step, for :func:`backtracking_line_search` alone)."""
    line_search_iterations: int = 0
    """Candidate steps measured."""
    non_finite: bool = False
    """A step was tried, gave a non-finite result and was undone (counted as a skipped update)."""
    skipped: str | None = None
    """Why no step was tried (a non-finite gradient, solution or curvature); the parameters are untouched."""
    old_objective: float = math.nan
    """The surrogate at the old parameters."""
    diagnostics: dict[str, float] = field(default_factory=dict)
    """The conjugate gradient's residual norm and iterations."""

    @classmethod
    def skip(cls, old_objective: float, reason: str, diagnostics: dict[str, float]) -> "StepOutcome":
        """:return: the outcome of a step not tried for ``reason``"""
        return cls(False, old_objective, 0.0, 0.0, skipped=reason, old_objective=old_objective, diagnostics=diagnostics)

    @property
    def counts_as_skipped(self) -> bool:
        """Whether the update counts as skipped (``skipped_updates``): not tried, or tried and undone."""
        return self.skipped is not None or self.non_finite

    def log_values(self) -> dict[str, float]:
        """:return: the ``train/`` values to log (sb3-contrib's keys, then CG and line-search diagnostics)"""
        values = {"policy_objective": self.old_objective, **self.diagnostics}
        values.update(
            kl_divergence_loss=self.kl,
            is_line_search_success=float(self.accepted),
            line_search_iterations=float(self.line_search_iterations),
            step_size=self.step_size,
        )
        if self.skipped is None:
            values["surrogate_improvement"] = self.objective - self.old_objective
        return values


class StepRule(Protocol):
    """How far to move along the direction: the one place TRPO and NaturalPG differ."""

    def __call__(
        self, params: Sequence[th.Tensor], direction: th.Tensor, full_step_scale: float, measure: Measure, old_objective: float
    ) -> StepOutcome:
        """
        :param params: the actor's parameters, moved in place
        :param direction: the conjugate-gradient solution ``s``
        :param full_step_scale: ``beta = sqrt(2 delta / s^T F s)``
        :param measure: the surrogate and mean KL at the parameters the policy holds
        :param old_objective: the surrogate at the old parameters
        :return: what was done
        """
        ...


@dataclass(frozen=True)
class StepSettings:
    """The step's settings, as a model holds them (its trust region, Fisher path and conjugate gradient)."""

    max_kl: float
    """``delta``, the bound on the mean whole-distribution KL."""
    damping: float
    """Added to the Fisher for conjugate gradient."""
    cg_max_steps: int
    fisher_backend: FisherBackend
    fisher_sample_fraction: float = 1.0
    damped_step_length: bool = False
    """``beta`` from ``s^T (F + damping I) s``, as sb3-contrib, instead of the paper's ``s^T F s``."""
    precision: Precision = "float32"
    """The number format of the Fisher products' network passes (everything else is float32)."""
    chunk_size: int | None = None
    """The most states per pass of the surrogate's gradient and measures (``None``: the whole batch)."""


def natural_gradient_step(
    policy: ActorCriticPolicy,
    batch: PolicyBatch,
    params: Sequence[th.Tensor],
    step_rule: StepRule,
    settings: StepSettings,
    plan: MlpPlan | None = None,
) -> StepOutcome:
    """
    One trust-region step on ``batch``. A non-finite value anywhere (advantages, gradient, CG solution, curvature)
    skips it and leaves the parameters untouched.

    :param policy: the policy, at the old parameters
    :param batch: the samples and their surrogate
    :param params: the actor's parameters (found once per model)
    :param step_rule: the line search or the fixed step
    :param settings: the trust region, the Fisher path, conjugate gradient
    :param plan: the policy's MLP plan (``model.mlp_plan``), for the NumPy Fisher path
    :return: what was done
    """
    # direction: the surrogate's gradient g, and s ~ (F + damping I)^-1 g by conjugate gradient
    found = natural_direction(
        policy, batch, settings.fisher_backend, settings.damping, settings.cg_max_steps,
        settings.fisher_sample_fraction, params, settings.precision, plan, settings.chunk_size,
    )  # fmt: skip
    if found.failure is not None:
        return StepOutcome.skip(found.objective, found.failure, found.diagnostics)
    assert found.direction is not None and found.fisher_direction is not None and found.evaluate is not None
    # step length: beta = sqrt(2 delta / s^T F s), or sb3-contrib's s^T (F + damping I) s
    curvature_direction = found.fisher_direction
    if settings.damped_step_length:
        curvature_direction = curvature_direction + settings.damping * found.direction
    beta = full_step_scale(found.direction, curvature_direction, settings.max_kl)
    if not math.isfinite(beta):
        return StepOutcome.skip(found.objective, "non-positive or non-finite curvature s^T F s", found.diagnostics)
    # step rule: the line search (TRPO) or the fixed step (NaturalPG), measured on the batch
    outcome = step_rule(params, found.direction, beta, found.evaluate, found.objective)
    return replace(outcome, old_objective=found.objective, diagnostics=found.diagnostics)


@dataclass(frozen=True)
class LineSearch:
    """TRPO's step rule: :func:`backtracking_line_search` from the full step ``beta * s``."""

    target_kl: float
    shrinking_factor: float = 0.8
    max_iter: int = 10
    rescale_on_kl: bool = False

    def __call__(
        self, params: Sequence[th.Tensor], direction: th.Tensor, full_step_scale: float, measure: Measure, old_objective: float
    ) -> StepOutcome:
        """:return: the line search's outcome, its step size in multiples of ``s``"""
        searched = backtracking_line_search(
            params, full_step_scale * direction, measure, old_objective, self.target_kl, self.shrinking_factor,
            self.max_iter, rescale_on_kl=self.rescale_on_kl,
        )  # fmt: skip
        return replace(searched, step_size=full_step_scale * searched.step_size)


@dataclass(frozen=True)
class FixedStep:
    """NaturalPG's step rule: :func:`apply_fixed_step` of ``beta * s`` (``step_size`` None) or ``step_size * s``."""

    step_size: float | None = None

    def __call__(
        self, params: Sequence[th.Tensor], direction: th.Tensor, full_step_scale: float, measure: Measure, old_objective: float
    ) -> StepOutcome:
        """:return: the step's outcome (undone, with the old surrogate, when non-finite)"""
        scale = full_step_scale if self.step_size is None else self.step_size
        outcome = apply_fixed_step(params, scale * direction, measure)
        if outcome.non_finite:
            return StepOutcome(accepted=False, objective=old_objective, kl=0.0, step_size=0.0, non_finite=True)
        return replace(outcome, step_size=scale)


@dataclass
class NaturalDirection:
    """What :func:`natural_direction` found: steps 1 and 2 of the step."""

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
    evaluate: Measure | None = None
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
    chunk_size: int | None = None,
) -> NaturalDirection:
    """
    The surrogate's gradient ``g``, the conjugate-gradient solution ``s`` of ``(F + damping I) s = g`` (the only place
    the damping is added), the undamped ``F s`` and the measure of the surrogate and mean KL that a step rule calls.

    :param policy: the policy, at the old parameters
    :param batch: the samples and their surrogate
    :param fisher_backend: the Fisher-vector product's path (``model.backends.fisher``)
    :param damping: added to the Fisher for conjugate gradient
    :param cg_max_steps: conjugate-gradient iterations
    :param fisher_sample_fraction: the share of the batch the Fisher is averaged over (a random subsample)
    :param params: the actor's parameters (default: found from the policy's distribution)
    :param precision: the number format of the Fisher products' network passes (everything else is float32)
    :param plan: the policy's MLP plan (``model.mlp_plan``), for the NumPy Fisher path
    :param chunk_size: run the surrogate's passes (gradient, measures) over pieces of at most this many states where
        the batch splits (:meth:`~sb3_trpo_ext.common.policy_batch.PolicyBatch.chunks`): the same sums, in another
        order, and far faster for convolutions on the CPU, whose activations of thousands of frames do not fit the
        caches; ``None``: the whole batch in one pass
    :return: the direction, or the reason there is none
    """
    params = list(params) if params is not None else list(actor_parameters(policy, batch.distribution(policy)))
    split = batch.chunks(chunk_size) if chunk_size is not None and len(batch.actions) > chunk_size else None
    pieces = split or [(batch, 1.0)]
    objective, gradient, distribution = 0.0, th.zeros(0), None
    olds: list[tuple[PolicyBatch, float, Distribution, th.Tensor]] = []  # each piece, its weight, old distribution, log-probs
    for piece, weight in pieces:  # the surrogate and its gradient, as weighted sums over the pieces
        distribution = piece.distribution(policy)
        log_prob = distribution.log_prob(piece.actions)
        piece_objective = weight * piece.surrogate(log_prob, log_prob.detach())
        piece_gradient = flat_grad(piece_objective, params, retain_graph=len(pieces) == 1)
        gradient = piece_gradient if len(olds) == 0 else gradient + piece_gradient
        objective += float(piece_objective.item())
        olds.append((piece, weight, detach_distribution(distribution), log_prob.detach()))
    found = NaturalDirection(params=params, objective=objective, gradient=gradient)
    if not (batch.is_finite() and th.isfinite(gradient).all()):
        found.failure = "non-finite advantages or gradient"
        return found

    whole = distribution if len(pieces) == 1 else None  # reused by the Fisher product where it can be
    fisher = _batch_fisher_product(
        policy, batch, whole, params, fisher_backend, fisher_sample_fraction, precision, plan, gradient.device
    )
    cg = conjugate_gradient(lambda v: fisher(v) + damping * v, gradient, cg_max_steps)
    found.diagnostics = {"cg_residual": cg.residual_norm, "cg_iterations": float(cg.iterations)}
    if not th.isfinite(cg.solution).all():
        found.failure = "non-finite conjugate-gradient solution"
        return found
    found.direction, found.fisher_direction = cg.solution, fisher(cg.solution)

    def evaluate() -> tuple[float, float]:
        new_objective = kl = 0.0
        with th.no_grad():
            for piece, weight, old_distribution, old_log_prob in olds:
                new_distribution = piece.distribution(policy)
                surrogate = piece.surrogate(new_distribution.log_prob(piece.actions), old_log_prob)
                new_objective += float((weight * surrogate).item())
                kl += float((weight * piece.state_mean(kl_per_state(old_distribution, new_distribution))).item())
        return new_objective, kl

    found.evaluate = evaluate
    return found


def _batch_fisher_product(
    policy: ActorCriticPolicy,
    batch: PolicyBatch,
    distribution: Distribution | None,
    params: Sequence[th.Tensor],
    backend: FisherBackend,
    sample_fraction: float,
    precision: Precision,
    plan: MlpPlan | None,
    device: th.device,
) -> FisherVectorProduct:
    """
    :return: the undamped Fisher-vector product of ``batch``, or of a random ``sample_fraction`` of its states
        (``distribution``: the policy's on the whole batch, if at hand, reused where it can be; ``device``: of the subsample's
        indices)
    """
    fisher_batch, n_samples = batch, len(batch.actions)
    n_fisher = max(1, round(sample_fraction * n_samples))
    fisher_distribution: Distribution | None = distribution
    if n_fisher < n_samples:
        fisher_batch = batch.states(th.randperm(n_samples, device=device)[:n_fisher])
        fisher_distribution = None
    if backend == "double-backprop" and fisher_distribution is None and precision == "float32":
        fisher_distribution = fisher_batch.distribution(policy)
    return make_fisher_vector_product(
        backend, policy, fisher_batch.observations, params, fisher_distribution, precision, fisher_batch.state_mean, plan
    )


@dataclass
class ConjugateGradientResult:
    """Outcome of :func:`conjugate_gradient`."""

    solution: th.Tensor
    """Approximate solution ``x`` of ``A x = b``."""
    residual_norm: float
    """Norm of ``b - A x`` at the end."""
    iterations: int
    """Number of matrix-vector products used."""


def conjugate_gradient(
    matrix_vector_product: Callable[[th.Tensor], th.Tensor],
    b: th.Tensor,
    max_steps: int = 10,
    residual_tol: float = 1e-10,
) -> ConjugateGradientResult:
    """
    Approximately solve ``A x = b`` for a symmetric positive-definite ``A`` given only ``v -> A v``.

    Starts from ``x = 0``; stops after ``max_steps`` products or when the squared residual norm falls below
    ``residual_tol``.

    :param matrix_vector_product: the function ``v -> A v``
    :param b: the right-hand side
    :param max_steps: the number of conjugate-gradient iterations ``k``
    :param residual_tol: stop once ``||r||^2`` is below this
    :return: the solution, the final residual norm and the number of iterations
    """
    x = th.zeros_like(b)
    residual = b.clone()
    direction = b.clone()
    residual_sq = th.dot(residual, residual)
    iterations = 0
    for _ in range(max_steps):
        if residual_sq.item() < residual_tol:
            break
        a_direction = matrix_vector_product(direction)
        curvature = th.dot(direction, a_direction)
        if not th.isfinite(curvature) or curvature.item() <= 0.0:
            break
        alpha = residual_sq / curvature
        x = x + alpha * direction
        residual = residual - alpha * a_direction
        new_residual_sq = th.dot(residual, residual)
        direction = residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
        iterations += 1
    return ConjugateGradientResult(solution=x, residual_norm=float(residual_sq.sqrt()), iterations=iterations)


def full_step_scale(direction: th.Tensor, fisher_direction: th.Tensor, target_kl: float) -> float:
    """
    The paper's maximal step length ``beta = sqrt(2 delta / (s^T F s))`` along the search direction ``s``.

    With this scale the quadratic model of the KL, ``0.5 * beta^2 * s^T F s``, equals ``delta``.

    :param direction: the search direction ``s`` (the conjugate-gradient solution)
    :param fisher_direction: ``F s`` (undamped)
    :param target_kl: ``delta``
    :return: ``beta``, or ``nan`` when ``s^T F s`` is not positive and finite
    """
    curvature = float(th.dot(direction, fisher_direction))
    if not (math.isfinite(curvature) and curvature > 0.0):
        return float("nan")
    return (2.0 * target_kl / curvature) ** 0.5


def backtracking_line_search(
    params: Sequence[th.Tensor],
    full_step: th.Tensor,
    evaluate: Measure,
    old_objective: float,
    target_kl: float,
    shrinking_factor: float = 0.8,
    max_iter: int = 10,
    rescale_on_kl: bool = False,
) -> StepOutcome:
    """
    Try ``theta_old + shrinking_factor^i * full_step`` for ``i = 0, 1, ...`` and keep the first candidate whose
    surrogate objective improves on ``old_objective`` and whose mean KL is at most ``target_kl``.

    With ``rescale_on_kl``, a candidate rejected for its KL is followed by the fraction at which the quadratic KL model
    through the measured KL meets the boundary, ``fraction * 0.98 * sqrt(target_kl / kl)``, instead of
    ``fraction * shrinking_factor`` (a rejected surrogate still shrinks by ``shrinking_factor``). The acceptance rule
    is the same.

    When no candidate is accepted (or one evaluates to a non-finite value), the parameters are restored to their
    exact old values, bit for bit.

    :param params: the policy parameters, modified in place
    :param full_step: the step at fraction 1 (``beta * s``)
    :param evaluate: returns ``(surrogate objective, mean KL)`` at the current parameters
    :param old_objective: the surrogate objective at the old parameters
    :param target_kl: the trust-region size ``delta``
    :param shrinking_factor: the factor by which the step is shrunk after a failed try, in (0, 1)
    :param max_iter: the maximal number of tries
    :param rescale_on_kl: after a try over the KL bound, aim the next one at the boundary (see above)
    :return: whether a step was accepted, the surrogate and mean KL after it, the accepted fraction of ``full_step``
        (``step_size``, 0 when none) and the candidates measured
    """
    saved = [p.detach().clone() for p in params]
    old_flat = th.cat([s.reshape(-1) for s in saved])
    fraction = 1.0
    for iteration in range(1, max_iter + 1):
        set_flat_params(params, old_flat + fraction * full_step)
        objective, kl = evaluate()
        if math.isfinite(objective) and math.isfinite(kl) and kl <= target_kl and objective > old_objective:
            return StepOutcome(True, objective, kl, step_size=fraction, line_search_iterations=iteration)
        if rescale_on_kl and math.isfinite(kl) and kl > target_kl:
            fraction *= min(0.98 * (target_kl / kl) ** 0.5, 0.98)
        else:
            fraction *= shrinking_factor
    _restore(params, saved)
    return StepOutcome(False, old_objective, 0.0, step_size=0.0, line_search_iterations=max_iter)


def apply_fixed_step(params: Sequence[th.Tensor], step: th.Tensor, evaluate: Measure) -> StepOutcome:
    """
    Move ``params`` by ``step`` without a line search; undo the move, bit for bit, if the result is non-finite.

    :param params: the policy parameters, modified in place
    :param step: the full parameter change
    :param evaluate: returns ``(surrogate objective, mean KL)`` at the current parameters
    :return: whether the step was kept (``non_finite`` when undone), and the objective and mean KL after it
        (``step_size`` 1: the whole of ``step``)
    """
    saved = [p.detach().clone() for p in params]
    set_flat_params(params, th.cat([s.reshape(-1) for s in saved]) + step)
    objective, kl = evaluate()
    if math.isfinite(objective) and math.isfinite(kl):
        return StepOutcome(True, objective, kl, step_size=1.0)
    _restore(params, saved)
    return StepOutcome(False, objective, kl, step_size=0.0, non_finite=True)


def _restore(params: Sequence[th.Tensor], saved: Sequence[th.Tensor]) -> None:
    with th.no_grad():
        for param, value in zip(params, saved, strict=True):
            param.copy_(value)


def __getattr__(name: str) -> Any:
    if name == "LineSearchResult":  # 0.2's line-search result: the fields are StepOutcome's
        warn_at_user_call(
            "LineSearchResult is deprecated: backtracking_line_search returns a StepOutcome (step_size is the accepted "
            "fraction, line_search_iterations the tries).",
            DeprecationWarning,
        )
        return StepOutcome
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
