"""
The entry point that ``python -m benchmarks`` and ``python -m reporting`` share: ``python -m PACKAGE TOOL [options]``
runs the tool's ``main(argv)`` as if its file had been started directly, so that its usage line and the command its
result files record (:func:`reporting.results_io.command_line`) name the file.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Mapping, Sequence

Tools = Mapping[str, tuple[str, str]]
"""Tool name -> (its module, what it does); a package's module runs by its ``__main__``."""


def available(tools: Tools) -> list[str]:
    """:return: the tools whose module is present"""
    return [name for name, (module, _) in tools.items() if importlib.util.find_spec(module) is not None]


def run_tool(module: str, argv: Sequence[str]) -> int:
    """
    :param module: the tool's module (a package: its ``__main__``)
    :param argv: the tool's options
    :return: the tool's exit status (0 where its ``main`` returns none)
    """
    tool = importlib.import_module(module)
    if not hasattr(tool, "main"):  # a package: its __main__ module
        tool = importlib.import_module(f"{tool.__name__}.__main__")
    saved, sys.argv = sys.argv, [str(tool.__file__), *argv]  # as if started directly: its usage and recorded command
    try:
        status = tool.main(list(argv))
    finally:
        sys.argv = saved
    return status if isinstance(status, int) else 0


def main(usage: str, tools: Tools, argv: Sequence[str]) -> int:
    """
    :param usage: what the entry point prints above its list of tools
    :param tools: the tools it runs
    :param argv: ``TOOL [options]``; nothing, ``-h`` or ``--help`` lists the tools
    :return: the tool's exit status (0 for the list, 2 for an unknown tool)
    """
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in tools:
        print(usage)
        print("tools:")
        for name in available(tools):
            print(f"  {name:16} {tools[name][1]}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return run_tool(tools[argv[0]][0], argv[1:])
