"""
The benchmark matrix: the report's statistics (on hand-made files in the flat layout the runner wrote before the result
schema), the runner's cells, commands and skipping, and one real tiny cell (written in the schema).
"""

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import matrix, matrix_cells
from reporting import figure4, matrix_report, results_io, vine_vs_single

ROOT = Path(__file__).resolve().parents[1]


def write_cell(results: Path, algo: str, env: str, seed: int, steps, means, budget: int = 100, **extra) -> Path:
    """A cell's file in the flat layout of the runner before the result schema (the report reads both)."""
    path = results / algo / env / f"seed_{seed}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    cell = {
        "algo": algo,
        "env": env,
        "seed": seed,
        "budget": budget,
        "eval_freq": 25,
        "eval_episodes": 10,
        "steps": list(steps),
        "mean": list(means),
        "std": [0.0] * len(means),
        "wall_s": 10.0 + seed,
        "date": f"2025-01-0{seed + 1}T10:00:00+00:00",
        "machine": "Test CPU, 2 cores, Linux x86_64",
        "git": {"commit": "0123456789abcdef", "dirty": False},
        "command": f"python -m sb3_trpo_ext.train --algo {algo} --env {env} --seed {seed} -n {budget} --eval-freq 25",
        "runner_command": "python benchmarks/matrix.py --preset test",
        **extra,
    }
    path.write_text(json.dumps(cell))
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Report statistics on hand-made files


@pytest.fixture
def hand_made(tmp_path: Path) -> Path:
    results = tmp_path / "results"
    # three seeds of "a", evaluated at 25, 50, 75, 100 steps of a 100-step budget
    write_cell(results, "trpo_ext", "Toy-v0", 0, [25, 50, 75, 100], [1.0, 2.0, 3.0, 4.0])
    write_cell(results, "trpo_ext", "Toy-v0", 1, [25, 50, 75, 100], [3.0, 4.0, 5.0, 6.0])
    write_cell(results, "trpo_ext", "Toy-v0", 2, [25, 50, 75, 100], [2.0, 6.0, 7.0, 11.0])
    # one seed of sb3-contrib with evaluations off the fractions: the value at 25% is the one at step 20, at 50% at 40
    write_cell(results, "sb3-contrib", "Toy-v0", 0, [20, 40, 60, 80, 100], [10.0, 20.0, 30.0, 40.0, 50.0])
    return results


def test_report_statistics(hand_made: Path) -> None:
    found = matrix_report.load(str(hand_made))
    ours = matrix_report.summarize(found["Toy-v0"]["trpo_ext"])
    assert ours["seeds"] == [0, 1, 2] and ours["budget"] == 100
    at25, at50, final = ours["at"]
    assert (at25.mean, at25.n) == (2.0, 3)
    assert at25.std == pytest.approx(1.0)  # values 1, 3, 2: sample std 1
    assert at50.mean == pytest.approx(4.0) and at50.std == pytest.approx(2.0)  # 2, 4, 6
    assert final.mean == pytest.approx(7.0) and final.std == pytest.approx(np.std([4, 6, 11], ddof=1))
    # AUC per seed: 2.5, 4.5, 6.5 -> mean 4.5, sample std 2
    assert ours["auc"].mean == pytest.approx(4.5) and ours["auc"].std == pytest.approx(2.0)
    assert ours["wall_s"] == pytest.approx(11.0)

    theirs = matrix_report.summarize(found["Toy-v0"]["sb3-contrib"])
    assert [stat.mean for stat in theirs["at"]] == [10.0, 20.0, 50.0]
    assert all(stat.n == 1 and math.isnan(stat.std) for stat in theirs["at"])  # one seed: no std
    assert theirs["auc"].mean == pytest.approx(30.0)


def test_value_at_and_curves() -> None:
    cell = {"steps": [10, 20, 30], "mean": [1.0, 2.0, 3.0]}
    assert matrix_report.value_at(cell, 5) is None
    assert matrix_report.value_at(cell, 10) == 1.0
    assert matrix_report.value_at(cell, 29.9) == 2.0
    assert matrix_report.value_at(cell, 100) == 3.0
    other = {"steps": [15, 30], "mean": [0.0, 6.0]}
    steps, mean, std = matrix_report.curves([cell, other])
    # grid: the steps of the seed with more evaluations, within the range both cover (15 to 30)
    assert steps.tolist() == [20.0, 30.0]
    assert mean.tolist() == pytest.approx([(2.0 + 2.0) / 2, (3.0 + 6.0) / 2])
    assert std.tolist() == pytest.approx([0.0, np.std([3.0, 6.0], ddof=1)])


def test_report_markdown_and_plots(hand_made: Path) -> None:
    text = matrix_report.report(str(hand_made))
    assert "#### Toy-v0 (100 steps)" in text
    assert "python benchmarks/matrix.py --preset test" in text and "Test CPU, 2 cores" in text
    assert "2025-01-01 to 2025-01-03" in text and "0123456" in text
    ours = next(line for line in text.splitlines() if line.startswith("| `trpo_ext`"))
    assert ours == "| `trpo_ext` | 3 | 2.00 ± 1.00 | 4.00 ± 2.00 | 7.00 ± 3.61 | 4.50 ± 2.00 | 11 |"
    theirs = next(line for line in text.splitlines() if line.startswith("| `sb3-contrib`"))
    assert theirs == "| `sb3-contrib` | 1 | **10.0** | **20.0** | **50.0** | **30.0** | 10 |"
    assert "--seed S -n 100" in text  # commands with the seed as a placeholder
    assert (hand_made / "Toy-v0.png").stat().st_size > 1000


def test_readme_markers(hand_made: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n")
    with pytest.raises(SystemExit, match="markers"):
        matrix_report.write_readme("TABLE", str(readme))
    assert readme.read_text() == "intro\n"
    readme.write_text("intro\n<!-- matrix:start -->\nold\n<!-- matrix:end -->\nend\n")
    matrix_report.main(["--results", str(hand_made), "--no-plots", "--readme", "--readme-path", str(readme)])
    content = readme.read_text()
    assert "old" not in content and "| `trpo_ext` | 3 |" in content and content.endswith("<!-- matrix:end -->\nend\n")


# ---------------------------------------------------------------------------------------------------------------------
# Runner: commands, budgets, skipping (no training)


def test_commands_and_budgets(tmp_path: Path) -> None:
    ours = matrix_cells.make_cells(["trpo_ext"], ["CartPole-v1"], [3], results=str(tmp_path), logs=str(tmp_path / "logs"))[0]
    assert ours.budget == 100_000 and ours.eval_freq == 5_000  # our YAML's n_timesteps, 20 evaluations
    command = ours.command()
    assert command[1:5] == ["-m", "sb3_trpo_ext.train", "--algo", "trpo_ext"]
    text = " ".join(command[1:])
    assert "--env CartPole-v1 --seed 3 -n 100000 --eval-freq 5000 --eval-episodes 10 --num-threads 1 -f" in text
    assert "-conf" not in command

    contrib_classic, contrib_mujoco = matrix_cells.make_cells(["sb3-contrib"], ["Acrobot-v1", "Hopper-v5"], [0])
    assert contrib_classic.command()[1:5] == ["-m", "rl_zoo3.train", "--algo", "trpo"]
    assert "-conf" not in contrib_classic.command()  # rl-zoo3's own trpo.yml has Acrobot-v1
    assert contrib_mujoco.command()[-2:] == ["-conf", "benchmarks/matrix_configs/trpo_contrib.yml"]
    assert contrib_mujoco.budget == 1_000_000
    hopper = matrix_cells.config_entry("sb3-contrib", "Hopper-v5")
    assert (hopper["n_envs"], hopper["n_steps"], hopper["batch_size"], hopper["cg_max_steps"]) == (2, 1024, 128, 25)
    assert matrix_cells.config_entry("sb3-contrib", "Swimmer-v5")["gamma"] == 0.9999
    assert matrix_cells.config_entry("sb3-contrib", "HalfCheetah-v5")["target_kl"] == 0.04

    # presets fix the budgets (rl-zoo3's) for every algorithm; --budget and --eval-freq win
    vine = matrix_cells.make_cells(["vine_trpo"], ["CartPole-v1"], [0], budgets=matrix_cells.PRESETS["classic"]["budgets"])[0]
    assert vine.budget == 100_000
    # vine: callbacks on trunk steps only (512 per 512 + 64 x 2 x 10 simulator steps), at most one evaluation per trunk
    assert matrix_cells.zoo_eval_freq("vine_trpo", "CartPole-v1", 500) == 512
    assert matrix_cells.zoo_eval_freq("vine_trpo", "CartPole-v1", 50_000) == round(50_000 * 512 / 1792)
    # a variant's iteration is its -params': the Atari vine at equal steps has 512 + 64 x 4 x 50, not 4,000 + 396,000
    atari_vine = matrix_cells.make_cells(["vine_trpo-atari-2m"], ["BreakoutNoFrameskip-v4"], [0], budget=2_000_000)[0]
    assert atari_vine.command()[-4:] == ["-params", "n_steps:512", "n_rollout_states:64", "rollout_length:50"]
    assert matrix_cells.zoo_eval_freq("vine_trpo-atari-2m", "BreakoutNoFrameskip-v4", 100_000) == round(100_000 * 512 / 13_312)
    assert matrix_cells.zoo_eval_freq("vine_trpo", "BreakoutNoFrameskip-v4", 100_000) == 4_000  # one per paper iteration
    small = matrix_cells.make_cells(["natural_pg"], ["Pendulum-v1"], [1], budget=3000, eval_freq=700)[0]
    assert (small.budget, small.eval_freq) == (3000, 700)
    assert matrix_cells.make_cells(["trpo_ext"], ["MountainCarContinuous-v0"], [0])[0].eval_freq == 2_500

    cells = matrix_cells.make_cells(["trpo_ext", "sb3-contrib"], ["CartPole-v1", "Acrobot-v1"], [0, 1])
    assert [(c.seed, c.env, c.algo) for c in cells[:4]] == [
        (0, "CartPole-v1", "trpo_ext"),
        (0, "CartPole-v1", "sb3-contrib"),
        (0, "Acrobot-v1", "trpo_ext"),
        (0, "Acrobot-v1", "sb3-contrib"),
    ]
    assert ours.display_command().startswith("python -m sb3_trpo_ext.train --algo trpo_ext")
    default = matrix_cells.make_cells(["trpo_ext"], ["CartPole-v1"], [0])[0]
    assert default.display_command().endswith("-f benchmarks/output/matrix/trpo_ext/CartPole-v1/seed_0")


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_skips_done_and_locked_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cells = matrix_cells.make_cells(
        ["trpo_ext"], ["CartPole-v1"], [0, 1, 2, 3], results=str(tmp_path), logs=str(tmp_path / "l")
    )
    done, locked, stale, todo = cells
    write_cell(tmp_path, "trpo_ext", "CartPole-v1", 0, [1], [1.0])
    Path(locked.lock_path).parent.mkdir(parents=True, exist_ok=True)
    Path(locked.lock_path).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    Path(stale.lock_path).write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    assert [matrix.cell_state(cell) for cell in cells] == ["done", "locked", "todo", "todo"]

    trained = []
    runner = matrix.Runner("test", quiet=True)
    monkeypatch.setattr(runner, "train", lambda cell: trained.append(cell.seed) or "ok")
    assert matrix.run_cells(cells, 1, runner) == {"done": 1, "locked": 1, "ok": 2}
    assert trained == [2, 3]  # the dead runner's lock was taken over
    assert Path(locked.lock_path).exists()  # another live runner's lock is left alone
    assert not Path(stale.lock_path).exists() and not Path(todo.lock_path).exists()  # released after the run

    # two workers given the same cells at the same time train each once
    def slow_train(cell) -> str:
        trained.append(cell.seed)
        time.sleep(0.2)
        results_io.write_result(cell.result_path, {"seed": cell.seed})
        return "ok"

    trained.clear()
    for cell in (locked, stale, todo):
        Path(cell.result_path).unlink(missing_ok=True)
    Path(locked.lock_path).unlink()
    monkeypatch.setattr(runner, "train", slow_train)
    counts = matrix.run_cells([c for cell in cells for c in (cell, cell)], 2, runner)
    assert sorted(trained) == [1, 2, 3] and counts["ok"] == 3 and counts["done"] + counts["locked"] == 5


def test_result_files_are_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.json"
    results_io.write_result(str(path), {"x": 1})
    assert results_io.read_result(str(path))["data"] == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


# ---------------------------------------------------------------------------------------------------------------------
# One tiny real cell, end to end


def test_tiny_cell_end_to_end(tmp_path: Path) -> None:
    results, logs = tmp_path / "results", tmp_path / "logs"
    argv = ["--algos", "trpo_ext", "--envs", "CartPole-v1", "--seeds", "0", "--budget", "2000", "--eval-freq", "1000"]
    argv += ["--results", str(results), "--logs", str(logs)]
    assert matrix.main(argv) == 0
    result = results_io.read_result(str(results / "trpo_ext" / "CartPole-v1" / "seed_0.json"))
    assert result["schema"] == 1 and result["git"]["commit"] and result["versions"]["stable-baselines3"]
    assert result["command"].startswith("python benchmarks/matrix.py --algos trpo_ext --envs CartPole-v1")  # the runner's
    cell = result["data"]
    assert (cell["algo"], cell["env"], cell["seed"], cell["budget"]) == ("trpo_ext", "CartPole-v1", 0, 2000)
    assert cell["steps"] == [1000, 2000] and cell["eval_episodes"] == 10
    assert all(9 <= value <= 500 for value in cell["mean"]) and all(value >= 0 for value in cell["std"])
    assert cell["wall_s"] > 0
    assert "--seed 0 -n 2000 --eval-freq 1000 --eval-episodes 10 --num-threads 1" in cell["command"]  # the training's
    assert matrix_report.cell_of(result)["runner_command"] == result["command"]
    assert not (logs / "trpo_ext" / "CartPole-v1" / "seed_0").exists()  # the big logs are deleted
    assert not list(results.rglob("*.lock")) and not list(results.rglob("*.tmp*"))

    # a second run skips the finished cell
    mtime = (results / "trpo_ext" / "CartPole-v1" / "seed_0.json").stat().st_mtime
    assert matrix.main(argv) == 0
    assert (results / "trpo_ext" / "CartPole-v1" / "seed_0.json").stat().st_mtime == mtime

    text = matrix_report.report(str(results))
    assert "#### CartPole-v1 (2K steps)" in text and "| `trpo_ext` | 1 |" in text
    assert (results / "CartPole-v1.png").exists()


def test_summary_table_compares_each_of_ours_with_sb3_contrib(hand_made: Path) -> None:
    # "trpo_ext": final 7, AUC 4.5 over 3 seeds; sb3-contrib: 3 seeds far above; an equal-trust-region variant, 1 seed
    write_cell(hand_made, "trpo_ext-equal-tr", "Toy-v0", 0, [50, 100], [40.0, 60.0])
    for seed in (1, 2):
        write_cell(hand_made, "sb3-contrib", "Toy-v0", seed, [50, 100], [30.0, 50.0 + seed])
    header, _, *rows = matrix_report.summary_table(matrix_report.load(str(hand_made))).splitlines()
    assert header.split(" | ")[1:5] == ["algorithm", "seeds", "final: mean ± std", "final: IQM [95% CI]"]
    cells = {row.split(" | ")[1]: [cell.strip() for cell in row.strip("|").split("|")] for row in rows}
    assert list(cells) == ["`trpo_ext`", "`trpo_ext-equal-tr`", "`sb3-contrib`"]
    assert cells["`trpo_ext`"][2:4] == ["3", "7.00 ± 3.61"] and cells["`trpo_ext`"][5] == "4.50 ± 2.00"
    assert cells["`trpo_ext`"][-1] == "behind / behind"  # the intervals of the IQM differences lie below 0
    assert (
        cells["`trpo_ext-equal-tr`"][2:5] == ["1", "60.0", "60.0 [n/a]"]
        and cells["`trpo_ext-equal-tr`"][-1] == "mean only / mean only"
    )
    assert cells["`sb3-contrib`"][-1] == "-"


def test_variant_cell_trains_our_algorithm_with_params_from_sb3_contribs_settings() -> None:
    # Hopper-v5 has 3 action dimensions and sb3-contrib's default target_kl 0.01; HalfCheetah-v5 6 and rl-zoo3's 0.04
    hopper = matrix_cells.Cell("trpo_ext-equal-tr", "Hopper-v5", 1, 1000, 100).command()
    assert hopper[hopper.index("--algo") + 1] == "trpo_ext"
    assert hopper[hopper.index("-params") + 1 :] == ["target_kl:0.03"]
    cheetah = matrix_cells.Cell("trpo_ext-contrib-engine", "HalfCheetah-v5", 0, 1000, 100).command()
    assert cheetah[cheetah.index("-params") + 1 :] == ["target_kl:0.24", "cg_damping:0.6", "fisher_sample_fraction:1.0"]
    assert matrix_cells.config_path("trpo_ext-equal-tr", "Hopper-v5") == os.path.join("hyperparams", "trpo_ext.yml")
    assert "-params" not in matrix_cells.Cell("trpo_ext", "Hopper-v5", 0, 1000, 100).command()


def test_figure4_draws_one_panel_per_task_with_the_algorithms_present(tmp_path: Path) -> None:
    results = tmp_path / "results"
    for seed in (0, 1):
        write_cell(results, "trpo_ext", "Hopper-v5", seed, [50, 100], [1.0 + seed, 2.0])
    write_cell(results, "natural_pg", "Walker2d-v5", 0, [50, 100], [0.5, 0.7])
    write_cell(results, "sb3-contrib", "Hopper-v5", 0, [50, 100], [3.0, 4.0])  # not one of the figure's methods
    out = tmp_path / "figure4.png"
    summary = figure4.plot(str(results), str(out))
    assert summary == ["Hopper-v5: trpo_ext, 2 seeds", "Walker2d-v5: natural_pg, 1 seeds"]
    assert out.stat().st_size > 1000
    rows = figure4.table(str(results)).splitlines()[2:]
    # Hopper trpo_ext: at 25 (none), at 50: 1 and 2 -> 1.50 ± 0.71; final 2 and 2; AUC 1.5 and 2
    assert rows[0] == "| Hopper-v5 | single path (TRPO) (`trpo_ext`) | 2 | - | 1.50 ± 0.71 | 2.00 ± 0.00 | 1.75 ± 0.35 |"
    assert rows[1].startswith("| Walker2d-v5 | natural gradient, fixed step (`natural_pg`) | 1 |") and len(rows) == 2


def test_vine_vs_single_counts_updates_from_the_yaml_and_compares_at_equal_updates(tmp_path: Path) -> None:
    results = tmp_path / "results"
    # single path: 100 steps per update; vine: 100 + 4 x 2 x 5 = 140 steps per update -> 1,000 // 140 = 7 updates,
    # where single path had 700 steps: its last evaluation at or before 700 is the one at 600
    single = {"n_envs": 2, "n_steps": 50}
    vine = {"n_envs": 1, "n_steps": 100, "n_rollout_states": 4, "n_actions_per_state": 2, "rollout_length": 5}
    steps = [200, 400, 600, 800, 1000]
    write_cell(results, "trpo_ext", "Toy-v0", 0, steps, [1.0, 2.0, 3.0, 4.0, 5.0], budget=1000)
    write_cell(results, "trpo_ext", "Toy-v0", 1, steps, [1.0, 2.0, 5.0, 4.0, 7.0], budget=1000)
    write_cell(results, "vine_trpo", "Toy-v0", 0, steps, [0.0, 1.0, 1.0, 2.0, 2.0], budget=1000)
    found = matrix_report.load(str(results))
    entries = {("trpo_ext", "Toy-v0"): single, ("vine_trpo", "Toy-v0"): vine}
    row = vine_vs_single.compare(found, entries).splitlines()[2]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:4] == ["Toy-v0", "1K", "2 / 1", "10 / 7"]
    assert cells[4] == "6.00 ± 1.41 / 2.00" and cells[6] == "4.00 ± 1.41"
    vine_vs_single.plot(found, entries, str(tmp_path / "v.png"))
    assert (tmp_path / "v.png").stat().st_size > 1000
