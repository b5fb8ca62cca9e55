"""
Running the vine study: whatever is missing of checkpoints, references and configurations (:func:`run_study`), each
configuration's estimates against the reference (:func:`run_config`), one result file each.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch as th

from reporting.results_io import read_result, write_result
from vine_study.checkpoint import Checkpoint, train_checkpoints
from vine_study.estimate import Directions, single_path_estimate, vine_estimate
from vine_study.plan import PLANS, SINGLE_PATH_SEED, VINE_SEED, Config, TaskPlan, configs, quick_plan
from vine_study.reference import FisherMetric, cosine, euclidean_norm, reference_directions


def run_config(
    checkpoint: Checkpoint, config: Config, reference: dict[str, th.Tensor], repeats: int, cg_max_steps: int
) -> dict[str, Any]:
    """
    :param checkpoint: the policy
    :param config: the estimator
    :param reference: the reference directions
    :param repeats: independent repeats
    :param cg_max_steps: conjugate-gradient iterations (the reference's)
    :return: the configuration's result (cosines per repeat and summaries)
    """
    start = time.perf_counter()
    estimates: list[Directions] = []
    for repeat in range(repeats):
        if config.family == "single_path":
            estimates.append(
                single_path_estimate(checkpoint, config.params["batch_size"], SINGLE_PATH_SEED + repeat, cg_max_steps)
            )
        else:
            estimates.append(vine_estimate(checkpoint, config.params, VINE_SEED + repeat, cg_max_steps))
    result: dict[str, Any] = {
        "task": checkpoint.task,
        "checkpoint": checkpoint.name,
        "config": config.name,
        "family": config.family,
        "params": config.params,
        "change": config.change,
        "repeats": repeats,
        "seeds": [(SINGLE_PATH_SEED if config.family == "single_path" else VINE_SEED) + r for r in range(repeats)],
        "sim_steps": [e.sim_steps for e in estimates],
        "cg_max_steps": cg_max_steps,
    }
    for key in ("trunk_steps", "branch_steps"):
        if estimates[0].detail.get(key) is not None:
            result[key] = [e.detail[key] for e in estimates]
    metric = FisherMetric(checkpoint, reference["metric_observations"])
    gradients, naturals = [e.gradient for e in estimates], [e.natural for e in estimates]
    for kind, vectors, target, similarity, norm in (
        ("gradient", gradients, reference["gradient"], cosine, euclidean_norm),
        ("natural", naturals, reference["natural"], cosine, euclidean_norm),
        ("mc_gradient", gradients, reference["mc_gradient"], cosine, euclidean_norm),
        ("policy", naturals, reference["natural"], metric.cosine, metric.norm),
    ):
        result[f"cos_{kind}"] = [similarity(v, target) for v in vectors]
        units = [v / norm(v) if norm(v) > 0 else v for v in vectors]
        pairs = [similarity(a, b) for a, b in itertools.combinations(units, 2)]
        result[f"pairwise_{kind}"] = float(np.mean(pairs)) if pairs else None
        result[f"mean_direction_cos_{kind}"] = similarity(th.stack(units).mean(dim=0), target)
    result["wall_s"] = time.perf_counter() - start
    return result


def load_reference(folder: str) -> tuple[dict[str, th.Tensor], dict[str, Any]] | None:
    """:param folder: a checkpoint's results folder
    :return: its saved reference (directions and description), or None"""
    path = os.path.join(folder, "reference.npz")
    if not (os.path.exists(path) and os.path.exists(os.path.join(folder, "reference.json"))):
        return None
    with np.load(path) as saved:
        directions = {key: th.from_numpy(saved[key]) for key in saved.files}
    return directions, read_result(os.path.join(folder, "reference.json"))["data"]


def checkpoint_reference(checkpoint: Checkpoint, plan: TaskPlan, folder: str) -> tuple[dict[str, th.Tensor], dict[str, Any]]:
    """
    :param checkpoint: the policy
    :param plan: the task's plan
    :param folder: the checkpoint's results folder
    :return: its reference: the one saved there, else a new one (saved there: ``reference.npz`` and ``reference.json``)
    """
    loaded = load_reference(folder)
    if loaded is not None:
        return loaded
    print(f"{checkpoint.task} {checkpoint.name}: reference", flush=True)
    directions, info = reference_directions(checkpoint, plan)
    info.update(task=checkpoint.task, checkpoint=checkpoint.name, checkpoint_info=checkpoint.info)
    info["torch_threads"] = th.get_num_threads()
    os.makedirs(folder, exist_ok=True)
    np.savez(os.path.join(folder, "reference.npz"), **{k: v.float().numpy() for k, v in directions.items()})
    write_result(os.path.join(folder, "reference.json"), info, git_paths=("sb3_trpo_ext",))
    return directions, info


def run_study(
    tasks: Sequence[str],
    checkpoint_names: Sequence[str],
    results: str,
    quick: bool = False,
    repeats: int | None = None,
    only: Sequence[str] = (),
) -> None:
    """
    Run whatever is missing: checkpoints, references, then each configuration (one result file each).

    :param tasks: env ids
    :param checkpoint_names: ``early``, ``mid``
    :param results: the results folder
    :param quick: tiny sizes
    :param repeats: override the plans' repeats
    :param only: run only configurations whose names start with one of these
    """
    for task in tasks:
        plan = quick_plan(PLANS[task]) if quick else PLANS[task]
        checkpoints_dir = os.path.join(results, "checkpoints")
        train_checkpoints(task, plan, checkpoints_dir, checkpoint_names)
        for name in checkpoint_names:
            checkpoint = Checkpoint.load(task, name, os.path.join(checkpoints_dir, task, name))
            folder = os.path.join(results, task, name)
            directions, info = checkpoint_reference(checkpoint, plan, folder)
            print(f"{task} {name}: reference of {info['samples']} steps, halves {info['half_cosine']}", flush=True)
            for config in configs(task, plan):
                path = os.path.join(folder, f"{config.name}.json")
                if os.path.exists(path) or (only and not any(config.name.startswith(prefix) for prefix in only)):
                    continue
                result = run_config(checkpoint, config, directions, repeats or plan.repeats, int(info["cg_max_steps"]))
                result["torch_threads"] = th.get_num_threads()
                write_result(path, result, git_paths=("sb3_trpo_ext",))
                print(
                    f"{task} {name} {config.name}: {np.mean(result['sim_steps']):.0f} steps, cos "
                    f"{np.mean(result['cos_gradient']):.3f} +- {np.std(result['cos_gradient']):.3f}, natural "
                    f"{np.mean(result['cos_natural']):.3f}, {result['wall_s']:.1f} s",
                    flush=True,
                )
