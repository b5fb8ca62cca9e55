"""
The vine study's reference: the gradient and natural-gradient direction of a very large single-path batch of a
checkpoint (:func:`reference_directions`), its own quality from two independent halves, and the cosines an estimate
is measured by (Euclidean, and in the Fisher metric: :class:`FisherMetric`).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch as th

from sb3_trpo_ext.common.base import NaturalGradientAlgorithm
from sb3_trpo_ext.common.fisher import actor_parameters, make_fisher_vector_product
from sb3_trpo_ext.common.natural_gradient import conjugate_gradient, flat_grad
from sb3_trpo_ext.common.policy_batch import AdvantageBatch, index_observations
from vine_study.checkpoint import Checkpoint
from vine_study.estimate import Samples, collect_single_path
from vine_study.plan import REFERENCE_SEED, REFERENCE_TARGET, TaskPlan


def cosine(a: th.Tensor, b: th.Tensor) -> float:
    """:return: the cosine similarity of two vectors (0 when one is zero)"""
    a, b = a.double(), b.double()
    norm = float(a.norm() * b.norm())
    return float(a @ b) / norm if norm > 0 else 0.0


class FisherMetric:
    """
    The reference's analytic Fisher (undamped) on a fixed sample of its states, as an inner product: the cosine of
    two natural-gradient directions in it is the cosine of the first-order changes of the policy's output they make
    (in the KL geometry TRPO's trust region measures).

    :param checkpoint: the policy
    :param observations: the states
    """

    def __init__(self, checkpoint: Checkpoint, observations: th.Tensor) -> None:
        model = checkpoint.trpo(checkpoint.make_env(1, REFERENCE_SEED), REFERENCE_SEED)
        params = actor_parameters(model.policy, model.policy.get_distribution(observations[:2]))
        self.product = make_fisher_vector_product(model.backends.fisher, model.policy, observations, params)

    def cosine(self, a: th.Tensor, b: th.Tensor) -> float:
        """:return: ``a^T F b / sqrt(a^T F a * b^T F b)`` (0 when one of them is zero)"""
        fa, fb = self.product(a.float()).double(), self.product(b.float()).double()
        norm = float(a.double() @ fa) * float(b.double() @ fb)
        return float(a.double() @ fb) / math.sqrt(norm) if norm > 0 else 0.0

    def norm(self, a: th.Tensor) -> float:
        """:return: ``sqrt(a^T F a)``"""
        return math.sqrt(max(0.0, float(a.double() @ self.product(a.float()).double())))


def euclidean_norm(a: th.Tensor) -> float:
    """:return: the Euclidean norm"""
    return float(a.double().norm())


def large_batch_gradient(model: NaturalGradientAlgorithm, batch: AdvantageBatch, chunk: int = 32_768) -> th.Tensor:
    """
    The gradient of ``batch.surrogate`` (a mean over samples) in chunks, so that a batch of any size fits in memory.

    :param model: the model (its policy)
    :param batch: the samples, advantages already normalized over the whole batch
    :param chunk: samples per backward pass
    :return: the gradient with respect to the actor's parameters
    """
    policy = model.policy
    n = len(batch.actions)
    total: th.Tensor | None = None
    for first in range(0, n, chunk):
        part = slice(first, min(n, first + chunk))
        distribution = policy.get_distribution(index_observations(batch.observations, part))
        log_prob = distribution.log_prob(batch.actions[part])
        params = actor_parameters(policy, distribution)
        piece = AdvantageBatch(batch.observations[part], batch.actions[part], batch.advantages[part])
        grad = flat_grad(piece.surrogate(log_prob, log_prob.detach()), params).double() * (len(piece.actions) / n)
        total = grad if total is None else total + grad
    assert total is not None
    return total


def large_batch_natural(
    model: NaturalGradientAlgorithm, samples: Samples, gradient: th.Tensor, fisher_states: int, seed: int
) -> th.Tensor:
    """
    :param model: the model (policy, Fisher path, ``cg_max_steps``, ``cg_damping``)
    :param samples: the batch
    :param gradient: its gradient
    :param fisher_states: the most states of the Fisher (drawn at random without replacement)
    :param seed: the seed of that draw
    :return: the CG solution of ``(F + damping I) s = gradient``
    """
    n = len(samples.actions)
    index = th.from_numpy(np.random.default_rng(seed).permutation(n)[: min(n, fisher_states)])
    observations = index_observations(samples.observations, index)
    params = actor_parameters(model.policy, model.policy.get_distribution(observations[:2]))
    fisher = make_fisher_vector_product(model.backends.fisher, model.policy, observations, params)
    damping = model.fisher_damping
    return conjugate_gradient(lambda v: fisher(v) + damping * v, gradient.float(), model.cg_max_steps).solution.double()


def reference_chunks(
    checkpoint: Checkpoint, plan: TaskPlan, model: NaturalGradientAlgorithm, log: Any
) -> tuple[list[Samples], list[Samples], list[th.Tensor]]:
    """
    Collect chunks of ``reference_envs x reference_steps`` steps, each with its own seeds, until the gradients of
    two halves (even and odd chunks) agree (cosine >= ``REFERENCE_TARGET``) or ``reference_chunks[1]`` chunks.

    :param checkpoint: the policy
    :param plan: the task's plan
    :param model: the model whose surrogate is differentiated
    :param log: where progress goes
    :return: the chunks, the two halves and their gradients
    """
    low, high = plan.reference_chunks
    chunks: list[Samples] = []
    while True:
        seed = REFERENCE_SEED + 1000 * len(chunks)
        chunks.append(collect_single_path(checkpoint, plan.reference_envs, plan.reference_steps, seed, monte_carlo=True))
        if len(chunks) < low or len(chunks) % 2:
            continue
        parts = [Samples.concatenate(chunks[0::2]), Samples.concatenate(chunks[1::2])]
        gradients = [large_batch_gradient(model, part.batch(model)) for part in parts]
        half = cosine(*gradients)
        log(f"  reference: {len(chunks)} chunks, {sum(len(c.actions) for c in chunks)} steps, halves {half:.3f}")
        if half >= REFERENCE_TARGET or len(chunks) >= high:
            return chunks, parts, gradients


def reference_directions(
    checkpoint: Checkpoint, plan: TaskPlan, log: Any = print
) -> tuple[dict[str, th.Tensor], dict[str, Any]]:
    """
    The reference directions of a checkpoint: chunks of ``reference_envs x reference_steps`` steps, each with its own
    seeds, until two halves agree (gradient cosine >= ``REFERENCE_TARGET``) or ``reference_chunks[1]`` chunks.

    :param checkpoint: the policy
    :param plan: the task's plan
    :param log: where progress goes
    :return: the directions (``gradient``, ``natural``, ``mc_gradient``), the states of the Fisher metric
        (``metric_observations``, see :class:`FisherMetric`) and their description
    """
    start = time.perf_counter()
    model = checkpoint.trpo(checkpoint.make_env(1, REFERENCE_SEED), REFERENCE_SEED)
    chunks, parts, gradients = reference_chunks(checkpoint, plan, model, log)
    halves = {"gradient": cosine(*gradients)}
    naturals = [
        large_batch_natural(model, part, g, plan.fisher_states // 2, REFERENCE_SEED + i)
        for i, (part, g) in enumerate(zip(parts, gradients, strict=True))
    ]
    halves["natural"] = cosine(*naturals)
    mc_gradients = [large_batch_gradient(model, part.batch(model, monte_carlo=True)) for part in parts]
    halves["mc_gradient"] = cosine(*mc_gradients)
    everything = Samples.concatenate(chunks)
    n = len(everything.actions)
    metric_index = th.from_numpy(np.random.default_rng(REFERENCE_SEED + 7).permutation(n)[: min(n, plan.metric_states)])
    metric_observations = index_observations(everything.observations, metric_index).float()
    metric = FisherMetric(checkpoint, metric_observations)
    halves["policy"] = metric.cosine(*naturals)
    gradient = large_batch_gradient(model, everything.batch(model))
    natural = large_batch_natural(model, everything, gradient, plan.fisher_states, REFERENCE_SEED)
    mc_gradient = large_batch_gradient(model, everything.batch(model, monte_carlo=True))
    quality = {key: implied_quality(value) for key, value in halves.items()}
    info = {
        "samples": len(everything.actions),
        "chunks": len(chunks),
        "envs_per_chunk": plan.reference_envs,
        "steps_per_env": plan.reference_steps,
        "fisher_states": min(len(everything.actions), plan.fisher_states),
        "metric_states": len(metric_index),
        "cg_max_steps": model.cg_max_steps,
        "cg_damping": model.cg_damping,
        "gamma": model.gamma,
        "gae_lambda": model.gae_lambda,
        "half_cosine": halves,
        "quality": quality,
        "gae_vs_mc_cosine": cosine(gradient, mc_gradient),
        "gae_vs_mc_cosine_corrected": cosine(gradient, mc_gradient) / (quality["gradient"] * quality["mc_gradient"])
        if quality["gradient"] * quality["mc_gradient"] > 0
        else None,
        "n_parameters": int(gradient.numel()),
        "wall_s": time.perf_counter() - start,
    }
    directions = {"gradient": gradient, "natural": natural, "mc_gradient": mc_gradient}
    return {**directions, "metric_observations": metric_observations}, info


def implied_quality(half_cosine: float) -> float:
    """
    :param half_cosine: cosine ``h`` between two independent halves of a batch
    :return: the full batch's cosine to its noise-free direction, ``sqrt(2h / (1 + h))`` (0 for ``h <= 0``)
    """
    return math.sqrt(2 * half_cosine / (1 + half_cosine)) if half_cosine > 0 else 0.0
