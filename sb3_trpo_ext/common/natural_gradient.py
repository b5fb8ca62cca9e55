"""
The natural-gradient engine shared by ``TRPO``, ``NaturalPG`` and ``VineTRPO``.

Pure functions on tensors (no ``self``), so each piece can be checked against an explicit matrix:

- :func:`flat_grad`: the gradient as one vector (in the :class:`~sb3_trpo_ext.common.flat_params.FlatLayout`,
  written back by :func:`~sb3_trpo_ext.common.flat_params.set_flat_params`);
- :func:`conjugate_gradient`: approximately solve ``A x = b`` with ``k`` steps;
- :func:`full_step_scale`: ``beta = sqrt(2 delta / s^T F s)``, the step that meets the quadratic KL model;
- :func:`backtracking_line_search`: shrink the step until the surrogate improves and the mean KL stays below
  ``delta``; when every try fails, the parameters are restored bit for bit.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch as th

from sb3_trpo_ext.common.flat_params import set_flat_params


@dataclass
class StepOutcome:
    """What a step rule did."""

    accepted: bool
    objective: float
    kl: float
    step_size: float
    line_search_iterations: int = 0
    non_finite: bool = False
    """The step gave a non-finite result and was undone (counted as a skipped update)."""
    extra: dict[str, float] = field(default_factory=dict)


def _restore(params: Sequence[th.Tensor], saved: Sequence[th.Tensor]) -> None:
    with th.no_grad():
        for param, value in zip(params, saved, strict=True):
            param.copy_(value)


def flat_grad(
    output: th.Tensor,
    params: Sequence[th.Tensor],
    retain_graph: bool = False,
    create_graph: bool = False,
) -> th.Tensor:
    """
    Gradient of a scalar with respect to ``params`` as one vector (zeros for parameters it does not depend on).

    :param output: a scalar tensor
    :param params: the parameters to differentiate with respect to
    :param retain_graph: keep the graph for another backward pass
    :param create_graph: build the graph of the gradient (for second derivatives)
    :return: a 1-D tensor
    """
    grads = th.autograd.grad(
        output, params, retain_graph=retain_graph or create_graph, create_graph=create_graph, allow_unused=True
    )
    return th.cat([(th.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)])


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


def apply_fixed_step(
    params: Sequence[th.Tensor],
    step: th.Tensor,
    evaluate: Callable[[], tuple[float, float]],
) -> tuple[bool, float, float]:
    """
    Move ``params`` by ``step`` without a line search; undo the move, bit for bit, if the result is non-finite.

    :param params: the policy parameters, modified in place
    :param step: the full parameter change
    :param evaluate: returns ``(surrogate objective, mean KL)`` at the current parameters
    :return: whether the step was kept, and the objective and mean KL after it
    """
    saved = [p.detach().clone() for p in params]
    set_flat_params(params, th.cat([s.reshape(-1) for s in saved]) + step)
    objective, kl = evaluate()
    if math.isfinite(objective) and math.isfinite(kl):
        return True, objective, kl
    _restore(params, saved)
    return False, objective, kl


@dataclass
class LineSearchResult:
    """Outcome of :func:`backtracking_line_search`."""

    accepted: bool
    """Whether a step was accepted (otherwise the parameters are unchanged)."""
    iterations: int
    """Number of candidate steps evaluated."""
    step_fraction: float
    """Fraction of the full step that was accepted (0 when none)."""
    objective: float
    """Surrogate objective at the final parameters."""
    kl: float
    """Mean KL at the final parameters (0 when none was accepted)."""


def backtracking_line_search(
    params: Sequence[th.Tensor],
    full_step: th.Tensor,
    evaluate: Callable[[], tuple[float, float]],
    old_objective: float,
    target_kl: float,
    shrinking_factor: float = 0.8,
    max_iter: int = 10,
    rescale_on_kl: bool = False,
) -> LineSearchResult:
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
    :return: whether a step was accepted, and its diagnostics
    """
    saved = [p.detach().clone() for p in params]
    old_flat = th.cat([s.reshape(-1) for s in saved])
    fraction = 1.0
    for iteration in range(1, max_iter + 1):
        set_flat_params(params, old_flat + fraction * full_step)
        objective, kl = evaluate()
        if math.isfinite(objective) and math.isfinite(kl) and kl <= target_kl and objective > old_objective:
            return LineSearchResult(True, iteration, fraction, objective, kl)
        if rescale_on_kl and math.isfinite(kl) and kl > target_kl:
            fraction *= min(0.98 * (target_kl / kl) ** 0.5, 0.98)
        else:
            fraction *= shrinking_factor
    _restore(params, saved)
    return LineSearchResult(False, max_iter, 0.0, old_objective, 0.0)
