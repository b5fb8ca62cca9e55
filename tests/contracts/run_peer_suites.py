"""
Run the peers' own test suites with our classes dropped in (``make contract``; ``make test`` runs it too).

    python tests/contracts/run_peer_suites.py                         # every suite, every algorithm of ours
    python tests/contracts/run_peer_suites.py --suites sb3 --algos TRPO
    python tests/contracts/run_peer_suites.py --algos sb3_contrib:TRPO --no-expected   # the peer itself, for counts
    python tests/contracts/run_peer_suites.py --suites rl-zoo3 --algos rl_zoo3:a2c --no-expected   # rl-zoo3 itself

The sdists of the *installed* versions of stable-baselines3, sb3-contrib and rl-zoo3 (all ship ``tests/``) are
downloaded once into ``.cache/peer-suites/`` (``pip download --no-binary :all: --no-deps NAME==VERSION``) and unpacked
there; nothing of them is copied into this repository or edited. Each (suite, algorithm) runs as its own pytest
process in the sdist's folder with the plugin :mod:`peer_dropin` (our class in the peer's class's place, only the
tests that use it, the expected failures of ``tests/contracts/expected_failures.yml`` as strict xfails), or for
rl-zoo3's suite :mod:`zoo_dropin` (its tests' ``python train.py --algo a2c`` / ``enjoy.py`` run our zoo entry points
with our key: ``TRPO`` -> ``trpo_ext``, ``NaturalPG`` -> ``natural_pg``, ``VineTRPO`` -> ``vine_trpo``;
``sb3_contrib:TRPO`` -> rl-zoo3's ``trpo``, ``rl_zoo3:KEY`` -> rl-zoo3's own ``KEY``).

Exit status: 0 when every run passed (expected failures included), 1 otherwise. A summary line per run gives
the counts.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tarfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.path.join(ROOT, ".cache", "peer-suites")
EXPECTED = os.path.join(HERE, "expected_failures.yml")

# the generic test files of each suite that exercise an on-policy algorithm (A2C in SB3's, TRPO in sb3-contrib's,
# the `a2c` key in rl-zoo3's)
SUITES: dict[str, tuple[str, list[str]]] = {
    "sb3": (
        "stable-baselines3",
        [
            "test_callbacks.py", "test_save_load.py", "test_spaces.py", "test_predict.py", "test_custom_policy.py",
            "test_deterministic.py", "test_dict_env.py", "test_cnn.py", "test_gae.py", "test_identity.py",
            "test_logger.py", "test_run.py", "test_sde.py", "test_tensorboard.py", "test_train_eval_mode.py",
        ],
    ),
    "sb3-contrib": (
        "sb3-contrib",
        ["test_run.py", "test_utils.py", "test_save_load.py", "test_identity.py", "test_cnn.py", "test_dict_env.py"],
    ),
    "rl-zoo3": ("rl-zoo3", ["test_train.py", "test_enjoy.py", "test_hyperparams_opt.py"]),
    # sb3-contrib's MaskablePPO tests, with our maskable classes in its place
    "sb3-contrib-mask": ("sb3-contrib", ["test_invalid_actions.py"]),
    # sb3-contrib's RecurrentPPO tests, with our recurrent classes in its place
    "sb3-contrib-lstm": ("sb3-contrib", ["test_lstm.py"]),
}  # fmt: skip
PLUGINS = {"rl-zoo3": "zoo_dropin"}
"""The drop-in plugin of each suite (default :mod:`peer_dropin`): :mod:`zoo_dropin` runs rl-zoo3's tests, which call
``python train.py`` / ``python enjoy.py``, against our zoo entry points."""
OURS = ("TRPO", "NaturalPG", "VineTRPO")
SUITE_ALGOS: dict[str, tuple[str, ...]] = {
    "sb3-contrib-mask": ("MaskableTRPO", "MaskableNaturalPG"),
    "sb3-contrib-lstm": ("RecurrentTRPO", "RecurrentNaturalPG"),
}
"""The classes a suite runs by default when it does not run :data:`OURS` (those of the peer class it stands in for)."""


def sdist_folder(distribution: str) -> str:
    """Download (once) and unpack the sdist of the installed ``distribution``; return its folder."""
    installed = version(distribution)
    stem = distribution.replace("-", "_")
    folder = os.path.join(CACHE, f"{stem}-{installed}")
    if os.path.isdir(os.path.join(folder, "tests")):
        return folder
    os.makedirs(CACHE, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "--no-build-isolation"]
    command += ["-d", CACHE, f"{distribution}=={installed}"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    archive = os.path.join(CACHE, f"{stem}-{installed}.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(CACHE, filter="data")
    if not os.path.isdir(os.path.join(folder, "tests")):
        raise SystemExit(f"{archive} has no tests/ folder: cannot run {distribution}'s suite")
    return folder


_PRINTING = threading.Lock()


def run_suite(suite: str, algo: str, expected: str | None, extra: Sequence[str]) -> tuple[int, str]:
    """Run one suite with one class; return pytest's exit code and its summary line."""
    distribution, files = SUITES[suite]
    folder = sdist_folder(distribution)
    plugin = PLUGINS.get(suite, "peer_dropin")
    # -P (Python >= 3.11): the pytest process imports the installed rl_zoo3, as the tests' subprocesses do, rather than
    # the source folder of the same version in the sdist
    safe_path = ["-P"] if plugin == "zoo_dropin" and sys.version_info >= (3, 11) else []
    command = [sys.executable, *safe_path, "-m", "pytest", "-p", plugin, "-p", "no:cacheprovider", "--drop-in", algo]
    command += ["--drop-in-suite", suite, "-q", "-rfEX", "--timeout", "900", "--rootdir", folder]
    command += ["-c", os.path.join(folder, "pyproject.toml")]
    if expected:
        command += ["--drop-in-expected", expected]
    command += [*extra, *(os.path.join("tests", name) for name in files)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.setdefault("OMP_NUM_THREADS", "1")
    process = subprocess.run(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with _PRINTING:  # one run's output at a time
        print(f"=== {suite} suite ({distribution} {version(distribution)}) with {algo}", flush=True)
        print(process.stdout[-12000:], flush=True)
    summaries = [line for line in process.stdout.splitlines() if re.search(r"\d+ (passed|failed|xfailed|error)", line)]
    return process.returncode, summaries[-1].strip("= ") if summaries else "no summary"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suites", nargs="+", choices=sorted(SUITES), default=sorted(SUITES))
    parser.add_argument("--algos", nargs="+", help="TRPO NaturalPG VineTRPO, or module:Class (default: each suite's own)")
    parser.add_argument("--no-expected", action="store_true", help="ignore the expected failures (plain counts)")
    parser.add_argument("--jobs", type=int, default=1, help="pytest processes at a time (one per core)")
    args, extra = parser.parse_known_args(argv)
    for suite in args.suites:  # download before running in parallel
        sdist_folder(SUITES[suite][0])
    runs = [(suite, algo) for suite in args.suites for algo in (args.algos or SUITE_ALGOS.get(suite, OURS))]

    def run(run: tuple[str, str]) -> tuple[str, str, int, str]:
        code, summary = run_suite(run[0], run[1], None if args.no_expected else EXPECTED, extra)
        return run[0], run[1], code, summary

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(run, runs))
    print("\n=== peer suites")
    for suite, algo, code, summary in results:
        print(f"{'ok  ' if code == 0 else 'FAIL'} {suite:12} {algo:18} {summary}")
    return 0 if all(code == 0 for _, _, code, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
