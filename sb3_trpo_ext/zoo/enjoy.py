"""``python -m sb3_trpo_ext.enjoy`` / ``sb3-trpo-ext-enjoy``: rl-zoo3's ``enjoy`` with our algorithms registered."""

import sys

import rl_zoo3.enjoy

from sb3_trpo_ext.zoo.registration import register


def main(argv: list[str] | None = None) -> None:
    """
    Register our algorithms, then run rl-zoo3's enjoy script (every rl-zoo3 option works).

    :param argv: command-line arguments (default: ``sys.argv[1:]``)
    """
    register()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    rl_zoo3.enjoy.enjoy()


if __name__ == "__main__":
    main()
