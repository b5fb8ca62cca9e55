"""
A pytest plugin that runs rl-zoo3's own tests (``tests/test_train.py``, ``test_enjoy.py``, ``test_hyperparams_opt.py``
of its sdist) against our zoo entry points.

    python -P -m pytest -p zoo_dropin --drop-in TRPO tests/test_train.py ...   (in rl-zoo3's sdist)

Those tests run ``python train.py ARGS`` / ``python enjoy.py ARGS`` (scripts of rl-zoo3's repository, not shipped in
its sdist) as subprocesses, in the current folder. At ``pytest_configure`` the plugin makes a temporary working folder
outside the repository and changes into it. It holds:

- ``train.py`` / ``enjoy.py``: generated shims that rewrite ``--algo A`` to ``--algo K`` when ``A`` is one of the keys
  mapped for the running test (environment variable ``ZOO_DROPIN_FROM``), then call ``sb3_trpo_ext.zoo.train.main`` /
  ``sb3_trpo_ext.zoo.enjoy.main`` (our keys) or rl-zoo3's ``train()`` / ``enjoy()`` (rl-zoo3's own keys);
- ``bin/python``: runs this interpreter, first on ``PATH``, so that the tests' bare ``python`` is this virtualenv's;
- ``hyperparams``, ``tests``, ``scripts``, ``rl-trained-agents``: links to the sdist's folders of these names, where
  it has them, for the relative paths the tests use (2.9.2's has the first two);
- ``rl-trained-agents/``, if the sdist has none: empty. ``test_enjoy.py`` lists it at import time, and it also asks
  the Hugging Face hub for rl-zoo3's agents, which cannot be reached here: ``rl_zoo3.utils.get_hf_trained_models``
  answers ``{}`` in the pytest process. Either only feeds ``test_trained_agents``, which runs rl-zoo3's pretrained
  agents of its own algorithms and is deselected.

No file of the sdist is changed. Options:

- ``--drop-in``: ``TRPO``, ``NaturalPG``, ``VineTRPO`` (or their keys ``trpo_ext``, ``natural_pg``, ``vine_trpo``):
  ours; ``rl_zoo3:KEY``: rl-zoo3's own scripts with its key ``KEY`` (``rl_zoo3:a2c``, the baseline: the ``a2c`` tests
  as written; ``sb3_contrib:TRPO`` and ``stable_baselines3:A2C`` mean ``rl_zoo3:trpo`` and ``rl_zoo3:a2c``);
  ``rl_zoo3``: rl-zoo3's scripts with no mapping at all (the ppo test below then runs ppo).
- ``--drop-in-expected FILE``: the ``rl-zoo3`` section of ``tests/contracts/expected_failures.yml``, strict xfails as in
  :mod:`peer_dropin` (an entry's ``algos`` are our class names, or ``rl_zoo3:KEY``). An entry may also list
  ``missing``: the files (relative to the sdist's root) that the test needs and the sdist does not ship. While none of
  them exists the test cannot pass, and is marked ``xfail(run=False)`` instead of spending its run time on failing;
  once one exists it runs as a strict xfail, so a stale entry still fails the run.

Which tests run: the tests' on-policy key is ``a2c``; ``ppo`` appears where SB3's other on-policy algorithm is
meant, and is mapped only in :data:`PPO_TESTS`, the ppo-only test whose options every on-policy algorithm takes.
The other ppo-only tests stay deselected, as they are about PPO or cannot run from the sdist: ``test_custom_yaml``
(PPO's ``n_epochs`` and ``stable_baselines3.ppo.MlpPolicy`` on A2C's YAML), ``test_python_config_file`` (PPO's
example config ``hyperparams/python/ppo_config_example.py``, not in the sdist), ``test_gym_packages`` (its env and
config are in ``tests/dummy_env``, not in the sdist), ``test_train[ppo-*]`` (``ppo-CartPole-v1`` is
``a2c-CartPole-v1`` once mapped; ``ppo-BipedalWalkerHardcore-v3`` tests ppo.yml's entry for it and needs Box2D),
``test_record_training`` (needs an X server). A test is selected when it is
parametrized with an ``a2c-...`` experiment, or (not parametrized so) its code names ``"a2c"`` or ``--algo a2c``;
:data:`REDUNDANT` tests are then deselected, with their reason.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import sys
import tempfile
import types
from collections.abc import Callable
from typing import Any

import pytest
import yaml

OURS = {"TRPO": "trpo_ext", "NaturalPG": "natural_pg", "VineTRPO": "vine_trpo"}
PEERS = {"sb3_contrib:TRPO": "rl_zoo3:trpo", "stable_baselines3:A2C": "rl_zoo3:a2c"}
MAPPED = "a2c"
"""The tests' on-policy key, mapped to the algorithm under test in every selected test."""
PPO_TESTS = ("tests/test_train.py::test_default_hyperparameters",)
"""ppo-only tests whose options (policy, n_timesteps, n_steps) every on-policy algorithm takes: ppo is mapped too."""
REDUNDANT: list[tuple[str, tuple[str, ...], Callable[[pytest.Item], bool], str]] = [
    (
        "tests/test_hyperparams_opt.py::test_optimize[[]a2c-*",
        (),
        lambda item: (item.callspec.params["sampler"], item.callspec.params["pruner"]) != ("random", "median"),
        "the sampler x pruner grid is Optuna's and rl-zoo3's code, the same for every algorithm: one combination "
        "(random sampler, median pruner: the one rl-zoo3 keeps for its slower algorithms) runs our sampler",
    ),
    (
        "tests/test_hyperparams_opt.py::test_multiple_workers",
        ("NaturalPG", "VineTRPO"),
        lambda item: True,
        "what it adds to test_optimize (rl-zoo3's --max-total-trials over worker processes sharing an SQLite study, "
        "and our prepare_study) does not depend on the algorithm: it runs with TRPO only (3 processes, the suite's "
        "slowest test)",
    ),
]
"""Selected tests deselected as redundant: (fnmatch pattern of node ids, for which of our classes (all if empty),
predicate on the item, reason)."""
SDIST_FOLDERS = ("hyperparams", "tests", "scripts", "rl-trained-agents")
"""The sdist's folders that the tests name by relative paths, linked into the working folder where they exist."""

SHIM = '''"""Generated by {plugin}: rl-zoo3's ``python {script}.py`` with ``--algo`` mapped (see that plugin)."""
import os
import sys

sources = set(filter(None, os.environ.get("ZOO_DROPIN_FROM", "").split(",")))
target = os.environ.get("ZOO_DROPIN_TO", "")
argv = sys.argv[1:]
for i, arg in enumerate(argv):
    if arg == "--algo" and i + 1 < len(argv) and argv[i + 1] in sources:
        argv[i + 1] = target
    elif arg.startswith("--algo=") and arg[len("--algo="):] in sources:
        argv[i] = "--algo=" + target
sys.argv = [sys.argv[0], *argv]
if os.environ.get("ZOO_DROPIN_IMPL") == "ours":
    from sb3_trpo_ext.zoo.{script} import main

    main()
else:
    from rl_zoo3.{script} import {script}

    {script}()
'''

_STATE = pytest.StashKey[dict[str, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("zoo drop-in")
    group.addoption("--drop-in", required=True, help="TRPO, NaturalPG, VineTRPO (or their zoo keys), rl_zoo3:KEY, rl_zoo3")
    group.addoption("--drop-in-suite", default="rl-zoo3", choices=["rl-zoo3"], help="whose suite this is")
    group.addoption("--drop-in-expected", default=None, help="YAML file of expected failures")


def resolve(spec: str) -> tuple[str, str | None, str]:
    """
    :param spec: the ``--drop-in`` value
    :return: (``ours`` or ``rl_zoo3``, the zoo key the tests' keys become or ``None`` for no mapping, the name that
        ``algos`` of expected-failure entries match)
    """
    spec = PEERS.get(spec, spec)
    if spec in OURS:
        return "ours", OURS[spec], spec
    names = {key: name for name, key in OURS.items()}
    if spec in names:
        return "ours", spec, names[spec]
    if spec == "rl_zoo3":
        return "rl_zoo3", None, spec
    if spec.startswith("rl_zoo3:"):
        import rl_zoo3.utils

        key = spec.split(":", 1)[1]
        if key not in rl_zoo3.utils.ALGOS:
            raise pytest.UsageError(f"--drop-in {spec}: rl-zoo3 has no key {key!r} ({sorted(rl_zoo3.utils.ALGOS)})")
        return "rl_zoo3", key, spec
    raise pytest.UsageError(f"--drop-in {spec}: expected one of {sorted(OURS)}, {sorted(OURS.values())}, rl_zoo3:KEY")


def make_workdir(sdist: str) -> str:
    """The temporary working folder (shims, ``bin/python``, links to the sdist's folders, ``rl-trained-agents/``)."""
    workdir = tempfile.mkdtemp(prefix="zoo-dropin-")
    for script in ("train", "enjoy"):
        with open(os.path.join(workdir, f"{script}.py"), "w") as f:
            f.write(SHIM.format(plugin=__name__, script=script))
    os.makedirs(os.path.join(workdir, "bin"))
    python = os.path.join(workdir, "bin", "python")
    with open(python, "w") as f:
        f.write(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # a wrapper, not a link: a link would lose the venv
    os.chmod(python, 0o755)
    for name in SDIST_FOLDERS:
        if os.path.isdir(os.path.join(sdist, name)):
            os.symlink(os.path.join(sdist, name), os.path.join(workdir, name))
    os.makedirs(os.path.join(workdir, "rl-trained-agents"), exist_ok=True)  # test_enjoy.py lists it at import
    return workdir


def pytest_configure(config: pytest.Config) -> None:
    impl, target, name = resolve(config.getoption("--drop-in"))
    import rl_zoo3.utils

    workdir = make_workdir(str(config.rootpath))
    saved = {key: os.environ.get(key) for key in ("PATH", "ZOO_DROPIN_IMPL", "ZOO_DROPIN_TO", "ZOO_DROPIN_FROM")}
    config.stash[_STATE] = {
        "impl": impl, "target": target, "name": name, "workdir": workdir, "cwd": os.getcwd(), "environ": saved,
        "get_hf_trained_models": rl_zoo3.utils.get_hf_trained_models,
    }  # fmt: skip
    rl_zoo3.utils.get_hf_trained_models = lambda *args, **kwargs: {}  # the hub is not reachable here; see above
    os.environ["PATH"] = os.pathsep.join([os.path.join(workdir, "bin"), os.environ.get("PATH", "")])
    os.environ["ZOO_DROPIN_IMPL"] = impl
    os.environ["ZOO_DROPIN_TO"] = target or ""
    os.environ["ZOO_DROPIN_FROM"] = ""
    os.chdir(workdir)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None:
        return
    import rl_zoo3.utils

    rl_zoo3.utils.get_hf_trained_models = state["get_hf_trained_models"]
    os.chdir(state["cwd"])
    for key, value in state["environ"].items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(state["workdir"], ignore_errors=True)


def _constants(code: types.CodeType) -> list[str]:
    """String constants of a function's code (in tuples and nested code too)."""
    found: list[str] = []
    for const in code.co_consts:
        if isinstance(const, str):
            found.append(const)
        elif isinstance(const, tuple):
            found.extend(value for value in const if isinstance(value, str))
        elif isinstance(const, types.CodeType):
            found.extend(_constants(const))
    return found


def runs_key(item: pytest.Item, key: str) -> bool:
    """Whether the test runs rl-zoo3's ``key``: by its ``algo-env`` parameter, else by the strings in its code."""
    import rl_zoo3.utils

    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        experiments = [
            value.split("-", 1)[0]
            for value in callspec.params.values()
            if isinstance(value, str) and value.split("-", 1)[0] in rl_zoo3.utils.ALGOS
        ]
        if experiments:
            return key in experiments
    function = getattr(item, "function", None)
    if function is None:
        return False
    pattern = re.compile(rf"--algo {re.escape(key)}\b")
    return any(text == key or pattern.search(text) for text in _constants(function.__code__))


def mapped_keys(item: pytest.Item) -> list[str]:
    """The tests' keys mapped in this test (empty when it is not selected)."""
    keys = [MAPPED] if runs_key(item, MAPPED) else []
    if any(fnmatch.fnmatchcase(item.nodeid, pattern) for pattern in PPO_TESTS) and runs_key(item, "ppo"):
        keys.append("ppo")
    return keys


def redundant(item: pytest.Item, name: str) -> str | None:
    """The reason why the test is redundant for ``name`` (see :data:`REDUNDANT`), or ``None``."""
    for pattern, algos, predicate, reason in REDUNDANT:
        if fnmatch.fnmatchcase(item.nodeid, pattern) and (not algos or name in algos) and predicate(item):
            return reason
    return None


def load_expected(path: str | None, name: str) -> list[dict[str, Any]]:
    """The ``rl-zoo3`` entries of ``path`` that apply to ``name`` (an entry without ``algos`` applies to all)."""
    if path is None:
        return []
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    entries = data.get("rl-zoo3") or []
    return [entry for entry in entries if not entry.get("algos") or name in entry["algos"]]


_MAPPED_KEYS = pytest.StashKey[list[str]]()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    state = config.stash[_STATE]
    selected = []
    for item in items:
        keys = mapped_keys(item)
        if keys and redundant(item, state["name"]) is None:
            item.stash[_MAPPED_KEYS] = keys if state["target"] is not None else []
            selected.append(item)
    deselected = [item for item in items if item not in selected]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = selected
    unmatched = []
    for entry in load_expected(config.getoption("--drop-in-expected"), state["name"]):
        patterns = entry["tests"]
        matched = [item for item in items if any(fnmatch.fnmatchcase(item.nodeid, pattern) for pattern in patterns)]
        if not matched:
            unmatched.append(patterns)
        missing = [path for path in entry.get("missing", []) if not os.path.exists(os.path.join(state["workdir"], path))]
        for item in matched:
            if missing and len(missing) == len(entry["missing"]):  # cannot pass: not worth its run time
                reason = f"{entry['reason']} [not run while the sdist lacks {', '.join(missing)}]"
                item.add_marker(pytest.mark.xfail(run=False, reason=reason))
            else:
                item.add_marker(pytest.mark.xfail(strict=True, reason=entry["reason"]))
    if unmatched:
        raise pytest.UsageError(f"expected-failure entries that match no collected test (stale?): {unmatched}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    os.environ["ZOO_DROPIN_FROM"] = ",".join(item.stash.get(_MAPPED_KEYS, []))
    try:
        return (yield)
    finally:
        os.environ["ZOO_DROPIN_FROM"] = ""


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash[_STATE]
    scripts = "sb3_trpo_ext.zoo.train/enjoy.main" if state["impl"] == "ours" else "rl_zoo3.train/enjoy"
    mapping = f"--algo {MAPPED} (and ppo in {', '.join(PPO_TESTS)}) -> --algo {state['target']}"
    if state["target"] is None:
        mapping = "--algo unchanged"
    lines = [
        f"zoo drop-in: python train.py/enjoy.py -> {scripts}, {mapping}",
        f"zoo drop-in working folder: {state['workdir']}",
    ]
    lines += [
        f"zoo drop-in deselects {pattern}{' (but one)' if pattern.endswith('*') else ''} as redundant: {reason}"
        for pattern, algos, _, reason in REDUNDANT
        if not algos or state["name"] in algos
    ]
    return lines
