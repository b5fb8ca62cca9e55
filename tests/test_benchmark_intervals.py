"""
The interval statistics of the benchmark tables (``reporting/intervals.py``) against independent computations, the
class-defaults report (``reporting/defaults_report.py``) and the matrix summary on hand-made result files, and the
README / docs sections they write.
"""

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from reporting import defaults_report, intervals, matrix_report, sections

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------------
# The statistics against independent computations


def test_iqm_is_the_mean_of_the_middle_half() -> None:
    values = np.array([9.0, -3.0, 4.0, 100.0, 1.0, 2.0, 7.0, -50.0])  # n = 8: the middle half is 4 values
    middle = sorted(values)[2:6]
    assert intervals.iqm(values) == pytest.approx(sum(middle) / 4)
    assert intervals.iqm([1.0, 2.0, 4.0]) == pytest.approx(7 / 3)  # below 4 runs nothing is cut: the mean


def pairs_probability(x, y) -> float:
    """P(X > Y) by counting every pair, ties half."""
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(x, y))
    return wins / (len(x) * len(y))


def test_probability_of_improvement_counts_pairs_with_ties_half() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        x = rng.integers(0, 5, size=rng.integers(1, 7)).astype(float)  # small integers: many ties
        y = rng.integers(0, 5, size=rng.integers(1, 7)).astype(float)
        assert intervals.probability_of_improvement(x, y) == pytest.approx(pairs_probability(x, y))
        # the vectorized form the bootstrap uses agrees
        assert float(intervals._pairs_probability(x[None], y[None])[0]) == pytest.approx(pairs_probability(x, y))
    assert intervals.probability_of_improvement([1, 2, 3], [2, 2, 0]) == pytest.approx(6 / 9)


def test_interval_contains_the_estimate_shrinks_with_more_runs_and_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(10, 2, size=8), rng.normal(10, 2, size=128)
    few, many = intervals.iqm_interval(small), intervals.iqm_interval(large)
    for interval, sample in ((few, small), (many, large)):
        assert interval.has_interval and interval.low <= interval.value <= interval.high
        assert interval.value == pytest.approx(intervals.iqm(sample)) and interval.n == len(sample)
    assert many.high - many.low < 0.5 * (few.high - few.low)
    assert intervals.iqm_interval(small) == few  # the same draws every time
    difference = intervals.difference_interval(small, large)
    assert difference.low <= intervals.iqm(small) - intervals.iqm(large) <= difference.high
    assert intervals.difference_interval(small, large) == difference
    probability = intervals.probability_interval(small, large)
    assert probability.low <= probability.value <= probability.high and 0 <= probability.low <= probability.high <= 1


def test_fewer_than_three_runs_give_the_value_and_no_interval() -> None:
    one, two = intervals.iqm_interval([5.0]), intervals.iqm_interval([1.0, 3.0])
    assert (one.value, one.low, one.high, one.n) == (5.0, None, None, 1)
    assert two.value == 2.0 and not two.has_interval and two.text() == "2 [n/a]"
    assert intervals.verdict(intervals.difference_interval([1.0, 2.0], [0.0, 0.0, 0.0])) == "mean only"
    assert intervals.compare([9.0], [1.0, 2.0, 3.0]) == "mean only"
    empty = intervals.iqm_interval([])
    assert empty.n == 0 and empty.text() == "-" and intervals.verdict(empty) == "-"


def test_constant_runs_give_an_exact_interval() -> None:
    interval = intervals.iqm_interval([500.0, 500.0, 500.0])
    assert (interval.low, interval.value, interval.high, interval.method) == (500.0, 500.0, 500.0, "exact")
    assert intervals.compare([500.0] * 3, [500.0] * 3) == "even"
    assert intervals.compare([500.0] * 3, [490.0] * 3) == "ahead"


def test_verdicts_follow_the_interval_of_the_difference() -> None:
    low, high = [1.0, 2.0, 3.0, 2.5, 1.5], [10.0, 11.0, 12.0, 10.5, 11.5]
    assert intervals.compare(high, low) == "ahead" and intervals.compare(low, high) == "behind"
    assert intervals.compare([1.0, 5.0, 9.0], [2.0, 6.0, 8.0]) == "even"
    assert intervals.verdict(intervals.probability_interval(high, low), null=0.5) == "ahead"
    assert intervals.verdict(intervals.probability_interval(low, high), null=0.5) == "behind"
    assert intervals.verdict(intervals.Interval(0.6, 0.4, 0.9, 3), null=0.5) == "even"


def test_aggregates_resample_within_each_task() -> None:
    # every stratified resample keeps 4 zeros and 4 ones, so the pooled IQM is always 0.5; pooled resampling would vary
    stratified = intervals.aggregate_iqm({"a": [0.0] * 4, "b": [1.0] * 4})
    assert (stratified.low, stratified.value, stratified.high) == (0.5, 0.5, 0.5)
    scores = {"a": [0.1, 0.2, 0.3, 0.9], "b": [0.5, 0.6, 0.9]}
    pooled = intervals.aggregate_iqm(scores)
    assert pooled.value == pytest.approx(np.mean(sorted([0.1, 0.2, 0.3, 0.9, 0.5, 0.6, 0.9])[1:6]))  # 7 runs: cut 1 + 1
    assert pooled.low <= pooled.value <= pooled.high and pooled.n == 7
    assert intervals.aggregate_iqm(scores) == pooled
    x, y = {"a": [1.0, 2.0, 3.0], "b": [5.0, 6.0, 7.0]}, {"a": [0.0, 1.0, 2.0], "b": [5.0, 5.0, 5.0]}
    average = intervals.aggregate_probability(x, y)
    assert average.value == pytest.approx((pairs_probability(x["a"], y["a"]) + pairs_probability(x["b"], y["b"])) / 2)
    assert average.low <= average.value <= average.high
    assert not intervals.aggregate_probability({"a": [1.0, 2.0]}, {"a": [0.0, 1.0, 2.0]}).has_interval


def test_normalize_maps_each_tasks_runs_onto_zero_one() -> None:
    normalized = intervals.normalize({"x": {"a": [0.0, 10.0], "b": [3.0]}, "y": {"a": [5.0, 20.0], "b": [3.0]}})
    assert normalized["x"]["a"].tolist() == [0.0, 0.5] and normalized["y"]["a"].tolist() == [0.25, 1.0]
    assert normalized["x"]["b"].tolist() == [0.0] and normalized["y"]["b"].tolist() == [0.0]  # all equal


# ---------------------------------------------------------------------------------------------------------------------
# Reports on hand-made result files


def write_cell(results: Path, algo: str, env: str, seed: int, means, budget: int = 100) -> None:
    path = results / algo / env / f"seed_{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = [budget * (i + 1) // len(means) for i in range(len(means))]
    cell = {
        "algo": algo,
        "env": env,
        "seed": seed,
        "budget": budget,
        "eval_freq": budget // len(means),
        "eval_episodes": 10,
        "steps": steps,
        "mean": list(means),
        "std": [0.0] * len(means),
        "wall_s": 10.0 + seed,
        "date": f"2025-01-0{seed + 1}T00:00:00+00:00",
        "machine": "Test CPU, 2 cores, Linux x86_64",
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "command": f"python benchmarks/train_defaults.py --algo x --env {env} --seed {seed} -n {budget}",
        "runner_command": "python benchmarks/matrix.py --preset defaults --workers 2",
    }
    path.write_text(json.dumps(cell))


@pytest.fixture
def defaults_cells(tmp_path: Path) -> Path:
    results = tmp_path / "matrix"
    for seed in range(3):
        # CartPole-v1: ours far ahead in both; Hopper-v5: overlapping seeds, so even
        write_cell(results, "trpo_ext-defaults", "CartPole-v1", seed, [400.0 + seed, 480.0 + seed, 500.0 - seed])
        write_cell(results, "sb3-contrib-defaults", "CartPole-v1", seed, [100.0 + seed, 150.0 + seed, 200.0 + seed])
        write_cell(results, "trpo_ext-defaults-0.1.0", "Hopper-v5", seed, [5.0, 6.0, 70.0 + seed], budget=500)
        write_cell(results, "trpo_ext-defaults", "Hopper-v5", seed, [10.0, 20.0 * seed, 1000.0 * seed], budget=500)
        write_cell(results, "sb3-contrib-defaults", "Hopper-v5", seed, [10.0, 20.0, 500.0 + 600.0 * seed], budget=500)
        write_cell(results, "vine_trpo-defaults", "Hopper-v5", seed, [5.0, 6.0, 7.0 + seed], budget=500)
        # the damped candidate: far below the defaults on CartPole in both metrics, two seeds only on Hopper
        write_cell(results, "trpo_ext-defaults-damped", "CartPole-v1", seed, [10.0 + seed, 20.0 + seed, 30.0 - seed])
        if seed < 2:
            write_cell(results, "trpo_ext-defaults-damped", "Hopper-v5", seed, [10.0, 20.0, 30.0], budget=500)
    write_cell(results, "trpo_ext-defaults", "Acrobot-v1", 0, [-500.0, -100.0])  # one seed: the mean only
    write_cell(results, "sb3-contrib-defaults", "Acrobot-v1", 0, [-500.0, -90.0])
    write_cell(results, "trpo_ext-defaults-cg10", "Ant-v5", 0, [1.0, 2.0], budget=500)  # a pilot: not reported
    write_cell(results, "trpo_ext", "CartPole-v1", 0, [1.0, 2.0])  # a zoo cell: not a class-defaults one
    return results


def row(text: str, *starts: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("| " + " | ".join(starts) + " |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_defaults_report_tables(defaults_cells: Path) -> None:
    found = defaults_report.load(str(defaults_cells))
    headline, detail = defaults_report.headline(found), defaults_report.detail(found)
    cartpole = row(headline, "CartPole-v1")
    assert cartpole[1:3] == ["100", "3 / 3"]
    assert cartpole[3] == "499 [498, 500]" and cartpole[5] == "ahead" and cartpole[8] == "ahead"
    assert cartpole[9] == "unchanged (d = 1: the same settings)"  # discrete actions: 0.1.0 defaults = now
    hopper = row(headline, "Hopper-v5")
    assert hopper[2] == "3 / 3" and hopper[5] == "even"
    assert hopper[9] == "71.0 -> 1,000 (even)"  # 0.1.0 defaults -> now, final return
    acrobot = row(headline, "Acrobot-v1")
    assert acrobot[2] == "1 / 1" and acrobot[3] == "-100 [n/a]" and acrobot[5] == "mean only"
    assert row(headline, "Ant-v5")[2] == "0 / 0"  # preset tasks without cells are listed
    assert "Over the 2 of 9 tasks with 3 or more seeds of both" in headline
    assert row(headline, "verdicts: ahead / even / behind")[1:] == ["1 / 1 / 0", "1 / 1 / 0"]
    probability = row(headline, "P(ours > sb3-contrib), mean over tasks [95% CI]")[1]
    assert probability.startswith("0.72 [") and probability.endswith("(even)")  # (1 + 4/9) / 2; the CI reaches 0.5
    assert row(headline, "IQM of normalized scores: ours [95% CI]")[1].startswith("0.87 [")
    assert "python benchmarks/matrix.py --preset defaults --workers 2" in headline
    assert "python benchmarks/defaults_report.py --readme" in headline
    assert "Test CPU, 2 cores, Linux x86_64" in headline and "2025-01-01 to 2025-01-03" in headline
    assert row(detail, "Hopper-v5", "`vine_trpo-defaults`")[4] == "behind"
    assert row(detail, "CartPole-v1", "`sb3-contrib-defaults`")[4] == "-"
    assert "simulator steps" in detail and "cg10" not in headline + detail and "| `trpo_ext` |" not in detail
    assert defaults_report.headline(defaults_report.load(str(defaults_cells))) == headline  # byte-identical again


def test_defaults_report_compares_the_candidate_with_the_defaults(defaults_cells: Path) -> None:
    detail = defaults_report.detail(defaults_report.load(str(defaults_cells)))
    # only CartPole has 3 seeds of both: the candidate is behind there in both metrics, every pair lost
    assert "on the 1 tasks with 3 or more seeds of both" in detail
    assert "behind on CartPole-v1 (final); behind on CartPole-v1 (AUC)." in detail
    candidate = "`trpo_ext-defaults-damped` vs `trpo_ext-defaults`, over 1 tasks"
    assert row(detail, candidate)[1:] == ["final return", "AUC"]
    assert row(detail, "verdicts: ahead / even / behind")[1:] == ["0 / 0 / 1", "0 / 0 / 1"]
    probability = row(detail, "P(`trpo_ext-defaults-damped` > `trpo_ext-defaults`), mean [95% CI]")[1:]
    assert all(text.startswith("0.00 [") and text.endswith("(behind)") for text in probability), probability
    assert row(detail, "Hopper-v5", "`trpo_ext-defaults-damped`")[2] == "2"  # listed, but not compared


def test_defaults_report_writes_the_readme_and_the_docs_page(defaults_cells: Path, tmp_path: Path) -> None:
    readme, docs = tmp_path / "README.md", tmp_path / "docs" / "results.md"
    docs.parent.mkdir()
    readme.write_text("front\n<!-- defaults:start -->\nold\n<!-- defaults:end -->\nlinks\n")
    docs.write_text(
        "# Results\n<!-- defaults:start -->\n<!-- defaults:end -->\n\n<!-- defaults-detail:start -->\nold\n"
        "<!-- defaults-detail:end -->\n"
    )
    argv = ["--results", str(defaults_cells), "--readme", "--readme-path", str(readme), "--docs-path", str(docs)]
    defaults_report.main(argv)
    front, page = readme.read_text(), docs.read_text()
    assert front.startswith("front\n<!-- defaults:start -->\nClass defaults") and front.endswith(
        "<!-- defaults:end -->\nlinks\n"
    )
    assert "old" not in front and "| CartPole-v1 | 100 | 3 / 3 |" in front and "defaults-detail" not in front
    assert "old" not in page and "| CartPole-v1 | `trpo_ext-defaults` | 3 |" in page and "| CartPole-v1 | 100 |" in page
    defaults_report.main(argv)
    assert readme.read_text() == front and docs.read_text() == page  # regenerates byte-identically


def test_section_goes_to_the_docs_page_when_the_readme_has_no_markers(tmp_path: Path) -> None:
    readme, docs = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text("front page\n")
    docs.write_text("<!-- toy:start -->\nold\n<!-- toy:end -->\n")
    sections.replace_readme_section("NEW", "toy", str(readme), str(docs))
    assert readme.read_text() == "front page\n" and docs.read_text() == "<!-- toy:start -->\nNEW\n<!-- toy:end -->\n"
    with pytest.raises(SystemExit, match="markers"):
        sections.replace_readme_section("NEW", "other", str(readme), str(docs))
    assert readme.read_text() == "front page\n" and docs.read_text() == "<!-- toy:start -->\nNEW\n<!-- toy:end -->\n"
    readme.write_text("<!-- toy:start -->\n<!-- toy:end -->\n")
    sections.replace_readme_section("BOTH", "toy", str(readme), str(docs))
    assert "BOTH" in readme.read_text() and "BOTH" in docs.read_text()


def test_repository_sections_are_where_the_scripts_write_them() -> None:
    front = (ROOT / "README.md").read_text()
    page = (ROOT / "docs" / "misc" / "results.md").read_text()
    assert len(front.splitlines()) <= 150
    assert "<!-- defaults:start -->" in front and "<!-- defaults:start -->" in page
    for name in ("defaults-detail", "matrix", "ablation", "ablation-mujoco", "figure4", "vine-vs-single", "vine-study"):
        assert f"<!-- {name}:start -->" in page and f"<!-- {name}:end -->" in page, name
    for name in ("speed", "demo-seeds"):
        assert f"<!-- {name}:start -->" in page, name


def test_matrix_summary_gives_intervals_and_verdicts(tmp_path: Path) -> None:
    results = tmp_path / "matrix"
    for seed in range(3):
        write_cell(results, "trpo_ext", "Toy-v0", seed, [10.0 + seed, 20.0 + seed, 30.0 + seed])
        write_cell(results, "sb3-contrib", "Toy-v0", seed, [1.0 + seed, 2.0 + seed, 3.0 + seed])
        write_cell(results, "trpo_ext-defaults", "Toy-v0", seed, [0.0, 0.0, 0.0])  # left to defaults_report.py
    text = matrix_report.report(str(results), plots=False)
    ours = row(text, "Toy-v0", "`trpo_ext`")
    assert ours[2:] == ["3", "31.0 ± 1.0", "31.0 [30.0, 32.0]", "21.0 ± 1.0", "21.0 [20.0, 22.0]", "ahead / ahead"]
    assert row(text, "Toy-v0", "`sb3-contrib`")[-1] == "-"
    assert "trpo_ext-defaults" not in text
