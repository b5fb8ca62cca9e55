"""
The benchmark runners and their reports as packages: the result schema (``reporting/results_io.py``: written by one
function, read by one loader that also reads the flat files written before it), the entry points ``python -m
benchmarks`` (runners) and ``python -m reporting`` (reports), the scripts still run as files, ``benchmarks/`` holds
runners only, and the modules stay small.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import __main__ as entry
from reporting import __main__ as reporting_entry
from reporting import results_io, tool_entry

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
PACKAGES = [ROOT / "benchmarks", ROOT / "reporting", ROOT / "vine_study"]

LEGACY_MATRIX_CELL = {
    "algo": "trpo_ext-defaults",
    "env": "Hopper-v5",
    "seed": 0,
    "budget": 500000,
    "eval_freq": 25000,
    "eval_episodes": 10,
    "deterministic_eval": True,
    "steps": [25000, 50000],
    "mean": [120.5, 340.25],
    "std": [3.0, 4.5],
    "wall_s": 812.3,
    "date": "2026-12-01T10:00:00+00:00",
    "machine": "Test CPU, 2 cores, Linux x86_64",
    "versions": {"python": "3.11.7", "torch": "2.13.0+cpu"},
    "git": {"commit": "0123456789abcdef", "dirty": False},
    "config": "class defaults",
    "command": "python benchmarks/train_defaults.py --algo trpo_ext --env Hopper-v5 --seed 0 -n 500000",
    "runner_command": "python benchmarks/matrix.py --preset defaults --workers 2",
}
"""A matrix cell as the runner wrote it before the schema (the files of ``benchmarks/results/matrix/``)."""
LEGACY_SPEED = {
    "date": "2026-11-24",
    "machine": "Linux x86_64, 2 cores",
    "torch": "2.13.0+cpu",
    "label": "issues 8+9, final",
    "command": "python benchmarks/speed.py --steps 20480 --rounds 3 --skip-vine",
    "normalize": False,
    "steps": 20480,
    "rounds": 3,
    "rows": [{"n_envs": 1, "lib": "sb3-contrib", "steps_per_s": 2512.5, "train_ms": 118.7}],
    "vine": [],
}
"""A ``speed.py`` result as written before the schema (``benchmarks/results/speed.json``)."""


def write_json(path: Path, content: dict) -> Path:
    path.write_text(json.dumps(content))
    return path


def test_read_result_upgrades_a_legacy_matrix_cell(tmp_path: Path) -> None:
    result = results_io.read_result(str(write_json(tmp_path / "seed_0.json", LEGACY_MATRIX_CELL)))
    assert list(result) == ["schema", "machine", "date", "git", "versions", "command", "data"]
    assert result["schema"] == 1 and result["machine"] == "Test CPU, 2 cores, Linux x86_64"
    assert result["date"] == "2026-12-01T10:00:00+00:00" and result["git"]["commit"] == "0123456789abcdef"
    assert result["versions"] == {"python": "3.11.7", "torch": "2.13.0+cpu"}
    # the runner wrote the file: its command is the result's; the cell's training command stays in the data
    assert result["command"] == "python benchmarks/matrix.py --preset defaults --workers 2"
    assert result["data"]["command"].startswith("python benchmarks/train_defaults.py --algo trpo_ext")
    assert set(result["data"]) == set(LEGACY_MATRIX_CELL) - {"date", "machine", "versions", "git", "runner_command"}
    assert result["data"]["mean"] == [120.5, 340.25] and result["data"]["seed"] == 0
    assert json.loads((tmp_path / "seed_0.json").read_text()) == LEGACY_MATRIX_CELL  # the file is left as it was


def test_read_result_upgrades_a_legacy_speed_file(tmp_path: Path) -> None:
    result = results_io.read_result(str(write_json(tmp_path / "speed.json", LEGACY_SPEED)))
    assert result["schema"] == 1 and result["date"] == "2026-11-24" and result["machine"] == "Linux x86_64, 2 cores"
    assert result["command"] == "python benchmarks/speed.py --steps 20480 --rounds 3 --skip-vine"
    assert result["versions"] == {"torch": "2.13.0+cpu"} and result["git"] is None  # a torch string: a version
    assert result["data"] == {key: LEGACY_SPEED[key] for key in ("label", "normalize", "steps", "rounds", "rows", "vine")}


def test_write_result_then_read_result_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "speed.py"), "--steps", "64", "--label", "a b"])
    data = {"rows": [{"n_envs": 1, "steps_per_s": 1234.5}], "label": "a b", "nested": {"x": [1, 2.5, None]}}
    path = tmp_path / "deep" / "speed.json"
    written = results_io.write_result(str(path), data, git_paths=("sb3_trpo_ext",))
    assert [p.name for p in path.parent.iterdir()] == ["speed.json"]  # no temporary file left
    read = results_io.read_result(str(path))
    assert read == written and read["data"] == data and read["schema"] == 1
    assert read["command"] == "python benchmarks/speed.py --steps 64 --label 'a b'"  # quoted for a shell
    assert read["git"]["paths"] == ["sb3_trpo_ext"] and len(read["git"]["commit"]) == 40
    assert read["versions"]["torch"] and read["versions"]["sb3_trpo_ext (source)"]
    assert read["machine"] == results_io.machine() and read["date"][:4].isdigit()
    assert results_io.upgrade(read) is read  # already in the schema: as it is
    with pytest.raises(ValueError, match="schema 2"):
        results_io.upgrade({**read, "schema": 2})


def test_command_line_names_how_the_tool_was_started() -> None:
    assert results_io.command_line([str(BENCHMARKS / "matrix.py"), "--preset", "defaults"]) == (
        "python benchmarks/matrix.py --preset defaults"
    )
    assert results_io.command_line([str(BENCHMARKS / "__main__.py"), "speed"]) == "python -m benchmarks speed"
    main = ROOT / "vine_study" / "__main__.py"
    assert results_io.command_line([str(main), "--quick"]) == "python -m vine_study --quick"


def test_python_m_benchmarks_and_reporting_list_their_tools() -> None:
    def listed(package: str) -> str:
        done = subprocess.run([sys.executable, "-m", package], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    runners, reports = listed("benchmarks"), listed("reporting")
    assert "tools:" in runners and "  matrix " in runners and "defaults-report" not in runners
    assert "tools:" in reports and "defaults-report" in reports and "  matrix " not in reports
    assert tool_entry.available(entry.TOOLS) == list(entry.TOOLS)  # every tool's module is there
    assert tool_entry.available(reporting_entry.TOOLS) == list(reporting_entry.TOOLS)
    unknown = subprocess.run([sys.executable, "-m", "benchmarks", "no-such-tool"], cwd=ROOT, capture_output=True, timeout=60)
    assert unknown.returncode == 2


def test_scripts_run_as_files_and_through_the_entry_point(tmp_path: Path) -> None:
    def run(*command: str) -> str:
        done = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "--eval-freq" in run("benchmarks/train_defaults.py", "--help")
    dry_run = ["--algos", "trpo_ext-defaults", "--envs", "CartPole-v1", "--seeds", "0", "--budget", "1000"]
    dry_run += ["--results", str(tmp_path)]
    as_file = run("benchmarks/matrix.py", *dry_run, "--dry-run")
    assert "[todo  ] trpo_ext-defaults CartPole-v1 seed 0: python benchmarks/train_defaults.py" in as_file
    assert run("-m", "benchmarks", "matrix", *dry_run, "--dry-run") == as_file
    assert "usage: matrix.py" in run("-m", "benchmarks", "matrix", "--help")  # as if started directly
    assert "--checkpoints" in run("-m", "vine_study", "--help")
    assert "--checkpoints" in run("vine_study", "--help")  # the folder, as a script
    assert "--snapshot" in run("benchmarks/atari_report.py", "--help")  # a command the results page names
    assert run("-m", "reporting", "defaults-report", "--help") == run("reporting/defaults_report.py", "--help")
    assert not list(tmp_path.iterdir())  # a dry run trains and writes nothing


def test_benchmark_modules_and_functions_stay_small() -> None:
    too_long = []
    for path in sorted(path for package in PACKAGES for path in package.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 400:
            too_long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}")
    assert not too_long, too_long


# the modules of benchmarks/ that are not runners: the commands the results pages name next to their tables (a
# generated section is rewritten only by its report), each a few lines that run the report's module of reporting/
REPORT_COMMANDS = {"report.py", "defaults_report.py", "figure4.py", "vine_vs_single.py", "atari_report.py"}


def test_benchmarks_holds_runners_only() -> None:
    for path in sorted(BENCHMARKS.glob("*.py")):
        text = path.read_text()
        if path.name in REPORT_COMMANDS:
            assert len(text.splitlines()) <= 20 and "from reporting." in text, path.name
        else:  # a runner, or the package's own files: the statistics of the tables are reporting's
            assert "reporting.intervals" not in text and "import intervals" not in text, path.name
    assert not (BENCHMARKS / "vine_study").exists() and not (BENCHMARKS / "intervals.py").exists()


def test_atari_throughput_table_takes_medians_of_the_latest_sitting(tmp_path, monkeypatch) -> None:
    from reporting import atari_report

    def write(folder: str, name: str, label: str, rate: float, policy_step: float) -> None:
        parts = {"rollout": 5.0, "policy_step": policy_step, "critic": 4.0}
        data = {"label": label, "rows": [{"lib": "sb3-trpo-ext", "steps_per_s": rate}],
                "seconds_per_update": {"sb3-trpo-ext": parts}}  # fmt: skip
        (tmp_path / folder).mkdir(exist_ok=True)
        result = {"schema": 1, "machine": "m", "date": "2026-12-05T00:00", "git": None, "versions": None,
                  "command": "python benchmarks/speed_atari.py --settings before --label x", "data": data}  # fmt: skip
        (tmp_path / folder / name).write_text(json.dumps(result))

    write("2026-01-01", "before_round1.json", "before (old)", 1.0, 99.0)  # an older sitting: not read
    for i, (before, after) in enumerate([(80.0, 200.0), (90.0, 190.0), (85.0, 300.0)]):
        write("2026-12-05", f"before_round{i}.json", "before (a)", before, 20.0 + i)
        write("2026-12-05", f"after_round{i}.json", "after (b)", after, 10.0)
    monkeypatch.setattr(atari_report, "THROUGHPUT", str(tmp_path))
    rows = [line for line in atari_report.throughput_table() if line.startswith("| before") or line.startswith("| after")]
    assert rows[0] == "| before (a) | 80.0, 90.0, 85.0 | 85.0 | **1.00x** | 5.0 | 21.0 | 4.0 |"
    assert rows[1] == "| after (b) | 200.0, 190.0, 300.0 | 200.0 | **2.35x** | 5.0 | 10.0 | 4.0 |"
