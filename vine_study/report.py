"""
The vine study's tables and plots: per task and checkpoint, the simulator steps each family needs to reach a cosine,
the table of every configuration, the plot of cosine against simulator steps, and the section of the docs' results
page (``vine-study``).
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from reporting.results_io import read_result
from reporting.sections import README, replace_readme_section
from vine_study.plan import PLANS

THRESHOLDS = (0.5, 0.8, 0.9)
MIN_PAIRWISE = 0.25
"""Below this mean pairwise cosine of the repeats the bias check (:func:`implied_cosine`) is too noisy to report."""
KIND_LABELS = {"gradient": "grad", "natural": "natural", "policy": "policy change"}
"""The cosines of the report: the gradient's, the CG direction's (Euclidean), the CG direction's in the Fisher metric."""
FAMILY_NAMES = {"single_path": "single path (batch size sweep)", "vine": "vine (N sweep at the baseline)"}


def load_results(results: str) -> dict[tuple[str, str], dict[str, Any]]:
    """
    :param results: the results folder
    :return: per (task, checkpoint): ``reference`` (its data), ``configs`` (name -> data) and ``provenance`` (the
        configurations' results without their data: machine, date, commit, versions, command)
    """
    found: dict[tuple[str, str], dict[str, Any]] = {}
    present = os.listdir(results) if os.path.isdir(results) else []
    for task in sorted(present, key=lambda name: (list(PLANS).index(name) if name in PLANS else len(PLANS), name)):
        if task == "checkpoints" or not os.path.isdir(os.path.join(results, task)):
            continue
        for name in sorted(os.listdir(os.path.join(results, task))):
            folder = os.path.join(results, task, name)
            if not os.path.exists(os.path.join(folder, "reference.json")):
                continue
            names = sorted(f for f in os.listdir(folder) if f.endswith(".json") and f != "reference.json")
            runs = [read_result(os.path.join(folder, file_name)) for file_name in names]
            found[(task, name)] = {
                "reference": read_result(os.path.join(folder, "reference.json"))["data"],
                "configs": {run["data"]["config"]: run["data"] for run in runs},
                "provenance": [{key: value for key, value in run.items() if key != "data"} for run in runs],
            }
    return found


def curve(runs: Sequence[dict[str, Any]], kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:param runs: configurations of one family
    :param kind: ``gradient``, ``natural`` or ``mc_gradient``
    :return: mean simulator steps, mean and std of the cosine, sorted by steps"""
    rows = sorted(
        (float(np.mean(r["sim_steps"])), float(np.mean(r[f"cos_{kind}"])), float(np.std(r[f"cos_{kind}"]))) for r in runs
    )
    steps, means, stds = (np.array(column) for column in zip(*rows, strict=True)) if rows else (np.zeros(0),) * 3
    return steps, means, stds


def steps_to_reach(steps: np.ndarray, means: np.ndarray, threshold: float) -> str:
    """
    :param steps: simulator steps, increasing
    :param means: the mean cosine at each
    :param threshold: the cosine to reach
    :return: the steps at which the mean curve first reaches ``threshold`` (linear in log steps between points),
        ``<= first`` when the first point is already there, ``not reached`` otherwise (the table's last column gives
        the best mean cosine)
    """
    for i, value in enumerate(means):
        if value >= threshold:
            if i == 0:
                return f"<= {steps[0]:,.0f}"
            before, after = means[i - 1], value
            fraction = (threshold - before) / (after - before)
            return f"{math.exp(math.log(steps[i - 1]) + fraction * (math.log(steps[i]) - math.log(steps[i - 1]))):,.0f}"
    return "not reached" if len(means) else "-"


def implied_cosine(run: dict[str, Any], reference: dict[str, Any], kind: str) -> float | None:
    """:return: the cosine of the estimator's expectation to the reference's noise-free direction (bias check)"""
    pairwise = run.get(f"pairwise_{kind}")
    quality = reference["quality"][kind]
    if pairwise is None or pairwise < MIN_PAIRWISE or quality <= 0:
        return None
    return float(np.mean(run[f"cos_{kind}"])) / (math.sqrt(pairwise) * quality)


def describe_change(run: dict[str, Any]) -> str:
    """:return: a configuration's short description"""
    if run["family"] == "single_path":
        return f"single path, batch {run['params']['batch_size']:,}"
    p = run["params"]
    text = (
        f"N={p['n_rollout_states']} K={p['n_actions_per_state']} m={p['rollout_length']} trunk={p['n_steps']}"
        f"{'' if p['bootstrap_branches'] else ' no-bootstrap'}{'' if p['common_random_numbers'] else ' no-CRN'}"
        f" q={p['action_sampling']}"
    )
    return ("vine " if run["family"] == "vine" else "vine variant ") + text


def report(results: str, plot: bool = True, detail: bool = True) -> str:
    """
    :param results: the results folder
    :param plot: also draw the PNG plots
    :param detail: also the table of every configuration (else only the steps needed to reach each cosine)
    :return: the markdown report
    """
    found = load_results(results)
    if not found:
        return "No vine-study results yet."
    lines = [introduction(found), ""]
    lines += headline_table(found) + [""]
    for (task, name), entry in found.items():
        lines += checkpoint_section(task, name, entry, detail)
        if plot:
            draw(task, name, entry["configs"], entry["reference"], os.path.join(results, f"{task}_{name}.png"))
    if detail:
        lines.append(
            '"implied": mean cosine / (sqrt(mean pairwise cosine of the repeats) x the reference\'s own cosine to its '
            "noise-free direction, sqrt(2h/(1+h))), the cosine of the estimator's expectation to the reference if the "
            "noise is independent: about 1 when both estimate the same direction (not given when the repeats agree too "
            f"little, mean pairwise cosine below {MIN_PAIRWISE}, for the ratio to mean anything)."
        )
    return "\n".join(lines)


def introduction(found: dict[tuple[str, str], dict[str, Any]]) -> str:
    """:return: the report's first paragraph: what is measured, the repeats, the commands, machines and dates"""
    provenance = [run for entry in found.values() for run in entry["provenance"]]
    commands = sorted({run["command"] or "" for run in provenance})
    dates = sorted({(run["date"] or "")[:10] for run in provenance})
    machines = sorted({run["machine"] or "" for run in provenance})
    repeats: dict[str, set[int]] = {}
    for (task, _), entry in found.items():
        repeats.setdefault(task, set()).update(run["repeats"] for run in entry["configs"].values())
    return (
        "Cosine similarity of policy-gradient estimates to a large-batch reference (single-path surrogate, normalized "
        "GAE, the checkpoint's critic) per simulator step spent (vine: trunk plus branch steps), mean over repeats ("
        + ", ".join(f"{task}: {'/'.join(map(str, sorted(r)))}" for task, r in repeats.items())
        + "). The tables give the simulator steps at which each family's mean curve first reaches a cosine "
        '(interpolated in log steps). "grad": the surrogate\'s gradient; "natural": the CG direction (the reference\'s '
        'CG settings) against the reference\'s CG direction; "policy change": the same two directions in the Fisher '
        "metric (the cosine of the changes of the policy's output they make). Single path: batches of 512 to 64K "
        "steps (32K on Hopper, 16K on Acrobot); vine: N from 16 to 512 (256 on Hopper and Acrobot) at the baseline "
        "(CartPole, Pendulum and Acrobot: `hyperparams/vine_trpo.yml`, Hopper: N 64, K 4, m 50, bootstrapped), the "
        "trunk growing with N. Acrobot (3 actions) is where the sampling distribution q can matter: its variants "
        "draw K = 2 of the 3 actions uniformly or from the policy. Measured by "
        + ", ".join(f"`{c}`" for c in commands)
        + f" on {'; '.join(machines)} (one torch thread), {dates[0]}"
        + (f" to {dates[-1]}" if dates[-1] != dates[0] else "")
        + ". Files, plots (`{task}_{checkpoint}.png`) and the table of every configuration (`report.md`, with the "
        "one-at-a-time changes of K, m, bootstrapping and common random numbers): `benchmarks/results/vine_study/`."
    )


def checkpoint_section(task: str, name: str, entry: dict[str, Any], detail: bool) -> list[str]:
    """
    :param task: the env id
    :param name: the checkpoint
    :param entry: its results (:func:`load_results`)
    :param detail: also the table of every configuration
    :return: the markdown lines of one task and checkpoint: the reference, the steps each family needs
    """
    reference, runs = entry["reference"], entry["configs"]
    info = reference.get("checkpoint_info", {})
    half = reference["half_cosine"]
    corrected = reference.get("gae_vs_mc_cosine_corrected")
    lines = [
        f"#### {task}, {name} checkpoint ({info.get('training_steps', 0):,} TRPO steps, "
        f"evaluation return {info.get('eval_return_mean', float('nan')):.1f})",
        "",
        f"Reference: {reference['samples']:,} steps ({reference['chunks']} chunks of {reference['envs_per_chunk']} "
        f"envs x {reference['steps_per_env']:,}); half-vs-half cosine {half['gradient']:.3f} (gradient), "
        f"{half['natural']:.3f} (natural), {half['policy']:.3f} (policy change), {half['mc_gradient']:.3f} (Monte "
        f"Carlo gradient, lambda 1); GAE vs Monte Carlo reference {reference['gae_vs_mc_cosine']:.3f}"
        + (f" ({corrected:.2f} corrected for their noise)" if corrected is not None else "")
        + ".",
        "",
        "| estimator | "
        + " | ".join(f"{label} {threshold}" for label in KIND_LABELS.values() for threshold in THRESHOLDS)
        + " | best mean cosine: grad / natural / policy change (at steps) |",
        "|---" * (2 + len(KIND_LABELS) * len(THRESHOLDS)) + "|",
    ]
    for family, label in FAMILY_NAMES.items():
        members = [run for run in runs.values() if run["family"] == family]
        if not members:
            continue
        cells, best = [], []
        for kind in KIND_LABELS:
            steps, means, _ = curve(members, kind)
            cells += [steps_to_reach(steps, means, threshold) for threshold in THRESHOLDS]
            best.append(f"{means.max():.2f} ({steps[int(np.argmax(means))]:,.0f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " / ".join(best) + " |")
    lines.append("")
    if detail:
        lines += configuration_table(runs, reference) + [""]
    return lines


def headline_table(found: dict[tuple[str, str], dict[str, Any]], thresholds: Sequence[float] = (0.5, 0.8)) -> list[str]:
    """
    The headline: per task and checkpoint, the simulator steps each family needs to reach a gradient cosine, and how
    many times more the vine needs: ``>=`` a lower bound (the vine never reached it, so its largest N is used, or
    single path reached it with its smallest batch), ``<=`` an upper bound (the vine reached it with its smallest N).

    :param found: the loaded results
    :param thresholds: the gradient cosines
    :return: the markdown lines
    """
    header = ["task, checkpoint"]
    for threshold in thresholds:
        header += [f"single path to {threshold}", f"vine to {threshold}", "vine / single path"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for (task, name), entry in found.items():
        row = [f"{task}, {name}"]
        for threshold in thresholds:
            reached = {}
            for family in FAMILY_NAMES:
                members = [run for run in entry["configs"].values() if run["family"] == family]
                steps, means, _ = curve(members, "gradient")
                reached[family] = (steps_to_reach(steps, means, threshold), steps)
            single, vine = reached["single_path"][0], reached["vine"][0]
            row += [single, vine]
            single_steps = _plain_number(single)
            vine_steps = _plain_number(vine)
            # "<= s": reached by the smallest size s (an upper bound on the steps); "not reached": beyond the largest
            if vine == "not reached" and len(reached["vine"][1]):
                vine_steps, vine_bound = float(reached["vine"][1][-1]), "above"
            else:
                vine_bound = "below" if vine.startswith("<=") else "exact"
            single_bound = "below" if single.startswith("<=") else "exact"
            if single_steps is None or vine_steps is None or (vine_bound, single_bound) == ("below", "below"):
                row.append("-")
            else:
                ratio = vine_steps / single_steps
                exact = (vine_bound, single_bound) == ("exact", "exact")
                at_least = vine_bound == "above" or single_bound == "below"
                row.append(f"{ratio:.1f}x" if exact else (f">= {ratio:.1f}x" if at_least else f"<= {ratio:.1f}x"))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _plain_number(text: str) -> float | None:
    try:
        return float(text.replace("<=", "").replace(",", "").strip())
    except ValueError:
        return None


def configuration_table(runs: dict[str, dict[str, Any]], reference: dict[str, Any]) -> list[str]:
    """:param runs: the configurations of one task and checkpoint
    :param reference: their reference's description
    :return: the markdown table of every configuration (mean ± std over repeats)"""
    lines = [
        "| configuration | sim steps | grad | natural | policy change | grad vs Monte Carlo ref | implied grad | "
        "implied policy change |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = {"single_path": 0, "vine": 1, "vine_variant": 2}
    for run in sorted(runs.values(), key=lambda r: (order[r["family"]], float(np.mean(r["sim_steps"])))):
        implied = [implied_cosine(run, reference, kind) for kind in ("gradient", "policy")]
        cells = [f"{np.mean(run[f'cos_{kind}']):.3f} ± {np.std(run[f'cos_{kind}']):.3f}" for kind in KIND_LABELS]
        cells += [f"{np.mean(run['cos_mc_gradient']):.3f}"] + ["-" if i is None else f"{i:.2f}" for i in implied]
        lines.append(f"| {describe_change(run)} | {np.mean(run['sim_steps']):,.0f} | " + " | ".join(cells) + " |")
    return lines


def draw(task: str, name: str, runs: dict[str, dict[str, Any]], reference: dict[str, Any], path: str) -> None:
    """Plot cosine vs simulator steps (log x), gradient and natural gradient, for one task and checkpoint."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ("gradient", "natural gradient (CG direction)", "policy change (CG direction, Fisher metric)")
    figure, axes = plt.subplots(1, 3, figsize=(16, 4.5), sharey=True)
    for axis, kind, title in zip(axes, KIND_LABELS, titles, strict=True):
        for family, style in (("single_path", "o-"), ("vine", "s-")):
            members = [run for run in runs.values() if run["family"] == family]
            if members:
                steps, means, stds = curve(members, kind)
                axis.plot(steps, means, style, label=FAMILY_NAMES[family])
                axis.fill_between(steps, means - stds, means + stds, alpha=0.2)
        for run in runs.values():
            if run["family"] == "vine_variant":
                x, y = float(np.mean(run["sim_steps"])), float(np.mean(run[f"cos_{kind}"]))
                axis.errorbar(x, y, yerr=float(np.std(run[f"cos_{kind}"])), fmt="^", color="tab:red", alpha=0.7)
                axis.annotate(
                    run["config"].removeprefix("vine-"), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                )
        axis.axhline(reference["half_cosine"][kind], color="grey", linestyle=":", label="reference half vs half")
        axis.set_xscale("log")
        axis.set_xlabel("simulator steps")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("cosine to the large-batch reference")
    axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle(f"{task}, {name} checkpoint: gradient quality per simulator step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_readme(text: str, readme: str = README) -> None:
    """Write ``text`` into ``readme`` between the vine-study markers."""
    paragraphs = [
        line if line.startswith(("|", "#")) else textwrap.fill(line, 120, break_long_words=False, break_on_hyphens=False)
        for line in text.replace("#### ", "##### ").split("\n")
    ]
    replace_readme_section("\n".join(paragraphs), "vine-study", readme)
