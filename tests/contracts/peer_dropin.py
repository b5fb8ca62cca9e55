"""
A pytest plugin that runs a peer's own test suite with one of our classes in place of the peer's class.

    python -m pytest -p peer_dropin --drop-in TRPO --drop-in-suite sb3 tests/test_run.py ...   (in SB3's sdist)

- ``--drop-in``: ``TRPO``, ``NaturalPG`` or ``VineTRPO`` (ours), or ``sb3_contrib:TRPO`` (sb3-contrib's, to measure
  the peer on the same tests).
- ``--drop-in-suite``: ``sb3`` puts the class in ``stable_baselines3.A2C``'s place, ``sb3-contrib`` in
  ``sb3_contrib.TRPO``'s, ``sb3-contrib-mask`` (``MaskableTRPO``, ``MaskableNaturalPG``) in
  ``sb3_contrib.MaskablePPO``'s, ``sb3-contrib-lstm`` (``RecurrentTRPO``, ``RecurrentNaturalPG``) in
  ``sb3_contrib.RecurrentPPO``'s. The substitution happens at ``pytest_configure``, before any test module is imported, so a
  test's ``from stable_baselines3 import A2C`` gets our class; no peer file is changed on disk.
- Only the tests that use the substituted class run: those parametrized with it, and those whose code names it.
  The others are deselected (they test the peer's other algorithms).
- ``--drop-in-expected FILE`` (``tests/contracts/expected_failures.yml``): the tests we expect to fail, each with its
  reason. They are marked ``xfail(strict=True)``: an unlisted failure fails the run, and so does a listed test that
  passes (its entry is then stale). An entry that matches no collected test also fails the run.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
from typing import Any

import pytest
import yaml

SUITE_TARGETS = {
    "sb3": ("stable_baselines3", "A2C"),
    "sb3-contrib": ("sb3_contrib", "TRPO"),
    "sb3-contrib-mask": ("sb3_contrib", "MaskablePPO"),
    "sb3-contrib-lstm": ("sb3_contrib", "RecurrentPPO"),
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("peer drop-in")
    group.addoption("--drop-in", required=True, help="our class (TRPO, NaturalPG, VineTRPO) or module:Class")
    group.addoption("--drop-in-suite", required=True, choices=sorted(SUITE_TARGETS), help="whose suite this is")
    group.addoption("--drop-in-expected", default=None, help="YAML file of expected failures")


def substitute_class(config: pytest.Config) -> type:
    """The class that stands in for the suite's target."""
    spec: str = config.getoption("--drop-in")
    if ":" in spec:
        module_name, name = spec.split(":", 1)
        return getattr(importlib.import_module(module_name), name)
    import sb3_trpo_ext

    return getattr(sb3_trpo_ext, spec)


def pytest_configure(config: pytest.Config) -> None:
    module_name, target = SUITE_TARGETS[config.getoption("--drop-in-suite")]
    module = importlib.import_module(module_name)
    cls = substitute_class(config)
    config.stash[_ORIGINAL] = getattr(module, target)
    config.stash[_SUBSTITUTE] = cls
    setattr(module, target, cls)


_ORIGINAL = pytest.StashKey[type]()
_SUBSTITUTE = pytest.StashKey[type]()


def _names_in(code: types.CodeType) -> set[str]:
    """Global names a function's code (and the code nested in it) refers to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names_in(const)
    return names


def _is_algorithm_class(value: Any) -> bool:
    """Whether a test parameter is an algorithm class (a test parametrized over VecEnv classes is not)."""
    from stable_baselines3.common.base_class import BaseAlgorithm

    return inspect.isclass(value) and issubclass(value, BaseAlgorithm)


def uses_class(item: pytest.Item, cls: type, target: str) -> bool:
    """Whether the test is parametrized with ``cls`` or its code names the substituted class."""
    callspec = getattr(item, "callspec", None)
    if callspec is not None and any(value is cls for value in callspec.params.values()):
        return True
    function = getattr(item, "function", None)
    if function is None:
        return False
    if callspec is not None and any(_is_algorithm_class(value) for value in callspec.params.values()):
        return False  # parametrized over other algorithms: the one run with ours is selected above
    return target in _names_in(function.__code__)


def matches(nodeid: str, pattern: str) -> bool:
    """Whether a node id matches a pattern in which ``*`` is the only wildcard (ids hold ``[...]`` literally)."""
    return re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), nodeid) is not None


def load_expected(path: str | None, suite: str, algo: str) -> list[dict[str, Any]]:
    """The entries of ``path`` for ``suite`` that apply to ``algo`` (an entry without ``algos`` applies to all)."""
    if path is None:
        return []
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    entries = data.get(suite) or []
    return [entry for entry in entries if not entry.get("algos") or algo in entry["algos"]]


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    cls = config.stash[_SUBSTITUTE]
    _, target = SUITE_TARGETS[config.getoption("--drop-in-suite")]
    selected = [item for item in items if uses_class(item, cls, target)]
    deselected = [item for item in items if item not in selected]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = selected
    entries = load_expected(config.getoption("--drop-in-expected"), config.getoption("--drop-in-suite"), cls.__name__)
    unmatched = []
    for entry in entries:
        patterns = entry["tests"]
        matched = [item for item in items if any(matches(item.nodeid, pattern) for pattern in patterns)]
        if not matched:
            unmatched.append(patterns)
        for item in matched:
            item.add_marker(pytest.mark.xfail(strict=True, reason=entry["reason"]))
    if unmatched:
        raise pytest.UsageError(f"expected-failure entries that match no collected test (stale?): {unmatched}")


def pytest_report_header(config: pytest.Config) -> str:
    module_name, target = SUITE_TARGETS[config.getoption("--drop-in-suite")]
    cls = config.stash[_SUBSTITUTE]
    return f"peer drop-in: {cls.__module__}.{cls.__name__} in place of {module_name}.{target}"
