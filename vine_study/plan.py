"""
What the vine study estimates: the sizes of the study on each task (:data:`PLANS`), the estimator configurations of a
task (:func:`configs`), the vine's keywords of each, and the seeds of each part.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch as th
import yaml

from reporting.results_io import ROOT

REFERENCE_TARGET = 0.95
"""Half-vs-half gradient cosine at which the reference stops growing."""


TRAINING_SEED = 0


REFERENCE_SEED = 10_000


SINGLE_PATH_SEED = 20_000


VINE_SEED = 30_000


YAML_ONLY_KEYS = ("n_timesteps", "policy", "normalize", "n_envs", "env_wrapper", "frame_stack")
"""Keys of an rl-zoo3 entry that are not constructor keywords."""


VINE_KEYS = (
    "n_steps",
    "n_rollout_states",
    "n_actions_per_state",
    "rollout_length",
    "action_sampling",
    "bootstrap_branches",
    "common_random_numbers",
)
"""Vine keywords taken from ``hyperparams/vine_trpo.yml`` (everything else comes from the checkpoint's TRPO entry)."""


VINE_DEFAULTS: dict[str, Any] = dict(
    n_steps=1024,
    n_rollout_states=64,
    n_actions_per_state=4,
    rollout_length=50,
    action_sampling="policy",
    bootstrap_branches=True,
    common_random_numbers=True,
)


@dataclass(frozen=True)
class TaskPlan:
    """
    The sizes of the study on one task.

    :param checkpoint_steps: training steps of each checkpoint
    :param reference_envs: envs per reference chunk
    :param reference_steps: steps per env per reference chunk
    :param reference_chunks: the least and the most chunks of the reference (even numbers)
    :param fisher_states: the most states of the reference's Fisher
    :param metric_states: states of the Fisher metric of the policy-change cosine (:class:`FisherMetric`)
    :param batch_sizes: single-path batch sizes (simulator steps)
    :param vine_baseline: vine keywords of the baseline (``None``: the task's ``vine_trpo.yml`` entry)
    :param n_sweep: N of the vine's sweep at the baseline
    :param variants: one-at-a-time changes of the baseline, ``(name, keywords)``
    :param repeats: independent repeats of each estimator configuration
    """

    checkpoint_steps: dict[str, int]
    reference_envs: int
    reference_steps: int
    reference_chunks: tuple[int, int]
    fisher_states: int
    metric_states: int
    batch_sizes: tuple[int, ...]
    vine_baseline: dict[str, Any] | None
    n_sweep: tuple[int, ...]
    variants: tuple[tuple[str, dict[str, Any]], ...]
    repeats: int


def _common_variants(k_values: Sequence[int], m_values: Sequence[int]) -> tuple[tuple[str, dict[str, Any]], ...]:
    variants: list[tuple[str, dict[str, Any]]] = [(f"K{k}", {"n_actions_per_state": k}) for k in k_values]
    variants += [(f"m{m}", {"rollout_length": m}) for m in m_values]
    variants += [("no_bootstrap", {"bootstrap_branches": False}), ("no_crn", {"common_random_numbers": False})]
    return tuple(variants)


SINGLE_PATH_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


PLANS: dict[str, TaskPlan] = {
    "CartPole-v1": TaskPlan(
        checkpoint_steps={"early": 3_000, "mid": 10_000},
        reference_envs=16,
        reference_steps=8192,
        reference_chunks=(2, 8),
        fisher_states=65_536,
        metric_states=4096,
        batch_sizes=SINGLE_PATH_SIZES,
        vine_baseline=None,
        n_sweep=(16, 32, 64, 128, 256, 512),
        variants=_common_variants((), (10, 25, 100, 200)),
        repeats=8,
    ),
    "Pendulum-v1": TaskPlan(
        checkpoint_steps={"early": 20_000, "mid": 40_000},
        reference_envs=16,
        reference_steps=8192,
        reference_chunks=(2, 8),
        fisher_states=65_536,
        metric_states=4096,
        batch_sizes=SINGLE_PATH_SIZES,
        vine_baseline=None,
        n_sweep=(16, 32, 64, 128, 256, 512),
        variants=_common_variants((2, 8), (10, 25, 100)),
        repeats=8,
    ),
    # the sampling distribution q matters only when K < n (K >= n rolls out every action, Eq. 15): Acrobot's 3 actions
    "Acrobot-v1": TaskPlan(
        checkpoint_steps={"early": 10_000, "mid": 40_000},
        reference_envs=16,
        reference_steps=8192,
        reference_chunks=(2, 4),
        fisher_states=65_536,
        metric_states=4096,
        batch_sizes=SINGLE_PATH_SIZES[:-2],
        vine_baseline=None,
        n_sweep=(16, 64, 256),
        variants=(
            ("K2_uniform", {"n_actions_per_state": 2, "action_sampling": "uniform"}),
            ("K2_policy", {"n_actions_per_state": 2, "action_sampling": "policy"}),
            ("no_crn", {"common_random_numbers": False}),
        ),
        repeats=5,
    ),
    "Hopper-v5": TaskPlan(
        checkpoint_steps={"early": 50_000, "mid": 200_000},
        reference_envs=8,
        reference_steps=8192,
        reference_chunks=(2, 6),
        fisher_states=65_536,
        metric_states=4096,
        batch_sizes=SINGLE_PATH_SIZES[:-1],
        vine_baseline=dict(VINE_DEFAULTS),
        n_sweep=(16, 32, 64, 128, 256),
        variants=_common_variants((2, 8), (20, 100)),
        repeats=5,
    ),
}


def quick_plan(plan: TaskPlan) -> TaskPlan:
    """:param plan: a task's plan
    :return: the same study at tiny sizes (for the test and for debugging)"""
    return replace(
        plan,
        checkpoint_steps={name: max(1, steps // 20) for name, steps in plan.checkpoint_steps.items()},
        reference_envs=4,
        reference_steps=1024,
        reference_chunks=(2, 2),
        fisher_states=2048,
        metric_states=512,
        batch_sizes=(256, 1024),
        n_sweep=(8, 16),
        variants=plan.variants[-2:],
        repeats=2,
    )


def yaml_entry(file_name: str, task: str) -> dict[str, Any]:
    """
    :param file_name: a file of ``hyperparams/``
    :param task: the env id
    :return: its entry for ``task`` (else its ``default`` entry)
    """
    with open(os.path.join(ROOT, "hyperparams", file_name)) as f:
        config = yaml.safe_load(f)
    return dict(config.get(task, config.get("default", {})))


def constructor_keywords(entry: dict[str, Any]) -> dict[str, Any]:
    """
    :param entry: an rl-zoo3 entry
    :return: the algorithm's keywords in it (``policy_kwargs`` strings evaluated as rl-zoo3 does)
    """
    keywords = {key: value for key, value in entry.items() if key not in YAML_ONLY_KEYS}
    if isinstance(keywords.get("policy_kwargs"), str):
        keywords["policy_kwargs"] = eval(keywords["policy_kwargs"], {"dict": dict, "nn": th.nn})  # noqa: S307 (our YAML)
    return keywords


def vine_baseline(task: str, plan: TaskPlan) -> dict[str, Any]:
    """:param task: the env id
    :param plan: the task's plan
    :return: the vine keywords of the task's baseline"""
    if plan.vine_baseline is not None:
        return dict(plan.vine_baseline)
    entry = yaml_entry("vine_trpo.yml", task)
    if int(entry.get("n_envs", 1)) != 1:
        raise ValueError(f"the study runs the vine's trunk on one env; {task}'s vine entry has n_envs {entry['n_envs']}")
    return {key: entry.get(key, VINE_DEFAULTS[key]) for key in VINE_KEYS}


def vine_keywords_for(baseline: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    """
    :param baseline: the baseline's vine keywords
    :param change: keywords to change; a new ``n_rollout_states`` scales the trunk along (same states per trunk step)
    :return: the configuration's vine keywords
    """
    keywords = {**baseline, **change}
    if "n_rollout_states" in change and "n_steps" not in change:
        ratio = baseline["n_steps"] / baseline["n_rollout_states"]
        keywords["n_steps"] = max(int(baseline["n_steps"]), int(math.ceil(ratio * keywords["n_rollout_states"])))
    return keywords


@dataclass(frozen=True)
class Config:
    """
    One estimator configuration.

    :param name: file name (without ``.json``)
    :param family: ``single_path``, ``vine`` (the N sweep at the baseline) or ``vine_variant``
    :param params: ``batch_size`` for single path, the vine's keywords otherwise
    :param change: what differs from the vine's baseline
    """

    name: str
    family: str
    params: dict[str, Any]
    change: dict[str, Any] = field(default_factory=dict)


def configs(task: str, plan: TaskPlan) -> list[Config]:
    """:param task: the env id
    :param plan: the task's plan
    :return: the estimator configurations of the task, cheapest families first"""
    found = [Config(f"single_path-B{size}", "single_path", {"batch_size": size}) for size in plan.batch_sizes]
    baseline = vine_baseline(task, plan)
    for n in plan.n_sweep:
        change = {"n_rollout_states": n}
        found.append(Config(f"vine-N{n}", "vine", vine_keywords_for(baseline, change), change))
    for name, change in plan.variants:
        found.append(Config(f"vine-{name}", "vine_variant", vine_keywords_for(baseline, change), change))
    return found
