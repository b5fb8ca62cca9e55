"""
The vine study (``vine_study/``) on CartPole-v1 and Pendulum-v1 at tiny sizes, with untrained policies:

- the single-path estimate gets closer to a large-batch reference as its batch grows;
- the vine's gradient (from ``VineTRPO.collect_rollouts``'s ``vine_batch``) equals Eq. (15) and Eq. (16) computed
  independently from the batch's Q-values;
- estimates are reproducible from their seed, and differ between seeds;
- the threshold interpolation, and a whole ``--quick`` run on one checkpoint: files, resuming, report, plot, README.
"""

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch as th

from reporting.results_io import read_result
from sb3_trpo_ext.common.fisher import actor_parameters
from vine_study import estimate, plan, reference, report, study
from vine_study.checkpoint import Checkpoint

ROOT = Path(__file__).resolve().parents[1]
CG_STEPS = 10


@pytest.fixture(autouse=True)
def one_thread():
    """Two cores are shared with other workers: keep torch single-threaded."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


@pytest.fixture(scope="module")
def cartpole() -> Checkpoint:
    return Checkpoint.untrained("CartPole-v1", seed=0)


@pytest.fixture(scope="module")
def cartpole_reference(cartpole):
    sizes = replace(plan.quick_plan(plan.PLANS["CartPole-v1"]), reference_envs=8, reference_steps=2048)
    return reference.reference_directions(cartpole, sizes, log=lambda _: None)


def test_single_path_improves_with_batch_size(cartpole, cartpole_reference):
    directions, info = cartpole_reference
    assert info["samples"] == 2 * 8 * 2048
    assert info["half_cosine"]["gradient"] > 0.9  # the reference agrees with itself
    small = [estimate.single_path_estimate(cartpole, 64, seed, CG_STEPS) for seed in range(4)]
    large = [estimate.single_path_estimate(cartpole, 4096, seed, CG_STEPS) for seed in range(4)]
    assert all(e.sim_steps == 64 for e in small) and all(e.sim_steps == 4096 for e in large)
    for kind in ("gradient", "natural"):
        cos_small = np.mean([reference.cosine(getattr(e, kind), directions[kind]) for e in small])
        cos_large = np.mean([reference.cosine(getattr(e, kind), directions[kind]) for e in large])
        assert cos_large > cos_small + 0.02, (kind, cos_small, cos_large)
        assert cos_large > 0.8, (kind, cos_large)


def _gradient(batch_loss: th.Tensor, params: list[th.nn.Parameter]) -> th.Tensor:
    return th.cat([g.reshape(-1) for g in th.autograd.grad(batch_loss, params)]).double()


def test_vine_gradient_is_eq15_on_cartpole(cartpole):
    keywords = dict(plan.vine_baseline("CartPole-v1", plan.PLANS["CartPole-v1"]), n_steps=64, n_rollout_states=6)
    model, batch = estimate.vine_batch(cartpole, {**keywords, "rollout_length": 7}, seed=3)
    assert batch.all_actions and batch.q_values.shape == (6, 2)
    assert 64 < model.num_timesteps <= 64 + 6 * 2 * 7  # trunk plus branch steps (branches may end early)
    gradient, _ = estimate.estimate_directions(model, batch, CG_STEPS)
    # Eq. (15) by hand: every state's two actions, weighted by their probabilities (no log-probabilities, no reshape)
    states = batch.observations[::2]
    assert th.equal(batch.actions.reshape(6, 2), th.tensor([[0, 1]] * 6))
    probs = model.policy.get_distribution(states).distribution.probs
    params = actor_parameters(model.policy, model.policy.get_distribution(states))
    by_hand = _gradient((probs * batch.q_values).sum() / 6, params)
    assert th.allclose(gradient, by_hand, rtol=1e-4, atol=1e-7)
    assert float(gradient.norm()) > 0


def test_vine_gradient_is_eq16_on_pendulum():
    checkpoint = Checkpoint.untrained("Pendulum-v1", seed=1)
    keywords = dict(plan.VINE_DEFAULTS, n_steps=64, n_rollout_states=5, n_actions_per_state=3, rollout_length=6)
    model, batch = estimate.vine_batch(checkpoint, keywords, seed=4)
    assert not batch.all_actions and batch.q_values.shape == (5, 3)
    assert 64 < model.num_timesteps <= 64 + 5 * 3 * 6  # trunk plus branch steps (a time limit may cut a branch)
    gradient, _ = estimate.estimate_directions(model, batch, CG_STEPS)
    # at the old parameters with q = pi the self-normalized weights are 1/K: the gradient of Eq. (16) is the score
    # function with each state's mean Q as baseline, (1/N) sum_n (1/K) sum_k grad log pi(a_nk|s_n) (Q_nk - mean_k Q_n)
    distribution = model.policy.get_distribution(batch.observations)
    log_prob = distribution.log_prob(batch.actions).reshape(5, 3)
    assert th.allclose(log_prob.detach(), batch.log_q, atol=1e-4)  # the actions were drawn from the policy
    centred = batch.q_values - batch.q_values.mean(dim=1, keepdim=True)
    params = actor_parameters(model.policy, distribution)
    by_hand = _gradient((log_prob * centred).sum() / (5 * 3), params)
    assert th.allclose(gradient, by_hand, rtol=1e-3, atol=1e-6)
    assert float(gradient.norm()) > 0


def test_estimates_are_reproducible(cartpole):
    keywords = dict(plan.vine_baseline("CartPole-v1", plan.PLANS["CartPole-v1"]), n_steps=64, n_rollout_states=4)
    keywords["rollout_length"] = 10
    for make in (
        lambda seed: estimate.single_path_estimate(cartpole, 256, seed, CG_STEPS),
        lambda seed: estimate.vine_estimate(cartpole, keywords, seed, CG_STEPS),
    ):
        first, again, other = make(5), make(5), make(6)
        assert th.equal(first.gradient, again.gradient) and th.equal(first.natural, again.natural)
        assert first.sim_steps == again.sim_steps
        assert not th.equal(first.gradient, other.gradient)


def test_steps_to_reach():
    steps, means = np.array([100.0, 1000.0, 10000.0]), np.array([0.3, 0.6, 0.95])
    assert report.steps_to_reach(steps, means, 0.5) == f"{100 * 10 ** (2 / 3):,.0f}"  # linear in log steps
    assert report.steps_to_reach(steps, means, 0.2) == "<= 100"
    assert report.steps_to_reach(steps, means, 0.99) == "not reached"
    assert reference.implied_quality(1.0) == 1.0 and reference.implied_quality(0.0) == 0.0


def test_quick_run_resumes_and_reports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(ROOT / "vine_study" / "__main__.py"), "--quick"])
    study.run_study(["CartPole-v1"], ["early"], str(tmp_path), quick=True, repeats=2, only=["single_path-B256", "vine-N8"])
    folder = tmp_path / "CartPole-v1" / "early"
    assert (tmp_path / "checkpoints" / "CartPole-v1" / "early" / "policy.pt").exists()
    files = sorted(path.name for path in folder.iterdir())
    assert files == ["reference.json", "reference.npz", "single_path-B256.json", "vine-N8.json"]
    result = read_result(str(folder / "vine-N8.json"))
    assert result["schema"] == 1 and result["git"]["commit"] and result["machine"]
    assert result["command"] == "python -m vine_study --quick"
    run = result["data"]
    assert len(run["cos_gradient"]) == 2 and run["torch_threads"] == 1
    assert all(s == t + b for s, t, b in zip(run["sim_steps"], run["trunk_steps"], run["branch_steps"], strict=True))
    stamp = (folder / "vine-N8.json").stat().st_mtime_ns
    study.run_study(["CartPole-v1"], ["early"], str(tmp_path), quick=True, repeats=2, only=["single_path-B256", "vine-N8"])
    assert (folder / "vine-N8.json").stat().st_mtime_ns == stamp  # skipped when present
    text = report.report(str(tmp_path))
    assert "#### CartPole-v1, early checkpoint" in text and "| vine (N sweep at the baseline) |" in text
    assert "Measured by `python -m vine_study --quick`" in text
    assert (tmp_path / "CartPole-v1_early.png").stat().st_size > 0
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- vine-study:start -->\nold\n<!-- vine-study:end -->\nafter\n")
    report.write_readme(text, str(readme))
    content = readme.read_text()
    assert content.startswith("before\n") and content.endswith("after\n") and "old" not in content
    assert "##### CartPole-v1, early checkpoint" in content


def test_headline_table_gives_the_vines_cost_relative_to_single_path_with_bounds() -> None:
    def run(family: str, steps: int, cosine: float) -> dict:
        return {"family": family, "sim_steps": [steps], "cos_gradient": [cosine]}

    single = [run("single_path", 512, 0.6), run("single_path", 1024, 0.7), run("single_path", 4096, 0.9)]
    vine = [run("vine", 2000, 0.4), run("vine", 8000, 0.6), run("vine", 16000, 0.7)]
    found = {("Toy-v0", "early"): {"configs": {str(i): r for i, r in enumerate(single + vine)}}}
    lines = report.headline_table(found, thresholds=(0.5, 0.6, 0.8))
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    # 0.5: single path already at its smallest batch (an upper bound on its steps), the vine between 2,000 and 8,000
    assert cells[1] == "<= 512" and cells[3].startswith(">= ")
    # 0.6: exactly at 512 (first point) for single path, 8,000 for the vine
    assert cells[4] == "<= 512" and cells[5] == "8,000" and cells[6] == ">= 15.6x"
    # 0.8: single path between 1,024 and 4,096 (log interpolation: 2,048), the vine never: at least 16,000 / 2,048
    assert cells[7] == "2,048" and cells[8] == "not reached" and cells[9] == ">= 7.8x"
