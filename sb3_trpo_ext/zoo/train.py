"""
``python -m sb3_trpo_ext.train`` / ``sb3-trpo-ext-train``: rl-zoo3's ``train`` with our algorithms registered.

Every rl-zoo3 option works as documented by ``python -m rl_zoo3.train --help``; ``--algo`` also accepts ``trpo_ext``,
``natural_pg`` and (once available) ``vine_trpo``, whose default config is our ``hyperparams/{algo}.yml``.

``--vec-env`` also takes ``ray``: the training envs in a :class:`~sb3_trpo_ext.distributed.RayVecEnv` and, for
``vine_trpo``, the branches on a :class:`~sb3_trpo_ext.distributed.RayBranchPool`, on the cluster of
``--ray-address`` (default: a local Ray instance). See :mod:`sb3_trpo_ext.zoo.exp_manager`.

``--checkpoint-freq N`` writes a checkpoint into the run folder every ``N`` steps; ``--resume`` (the latest run under
``-f``) or ``--resume-from RUN_FOLDER`` continues a run from its last one, for any ``--algo``. See
:mod:`sb3_trpo_ext.zoo.resume`.

For our keys, a config entry the algorithm would not accept ends the run before training with a message naming the
file, entry and key (exit status 2); a config file without an entry for the env (nor ``default``, or ``atari`` for an
Atari env) ends it with status 1, as rl-zoo3's ``ValueError("Hyperparameters not found ...")`` does.
"""

import argparse
import sys
import types
from typing import Any

import rl_zoo3.train

from sb3_trpo_ext.zoo.checks import HyperparameterError
from sb3_trpo_ext.zoo.registration import register
from sb3_trpo_ext.zoo.resume import ResumableExperimentManager, add_resume_arguments


class ZooArgumentParser(argparse.ArgumentParser):
    """rl-zoo3's argument parser with ``ray`` among the ``--vec-env`` choices and a ``--ray-address`` option."""

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        if "--save-freq" in names:  # our checkpoints to resume from, next to rl-zoo3's model snapshots
            action = super().add_argument(*names, **kwargs)
            add_resume_arguments(self)
            return action
        if "--vec-env" not in names:
            return super().add_argument(*names, **kwargs)
        kwargs["choices"] = [*kwargs.get("choices", ()), "ray"]
        kwargs["help"] = (
            "VecEnv type (ray: a RayVecEnv, and vine_trpo's branches on a RayBranchPool; needs pip install "
            "'sb3-trpo-ext[ray]')"
        )
        action = super().add_argument(*names, **kwargs)
        super().add_argument(
            "--ray-address",
            type=str,
            default=None,
            help="Ray cluster to join with --vec-env ray, e.g. HEAD:6379 (default: start a local Ray instance)",
        )
        return action


def main(argv: list[str] | None = None) -> None:
    """
    Register our algorithms, then run rl-zoo3's training script.

    :param argv: command-line arguments (default: ``sys.argv[1:]``)
    """
    register()
    # rl-zoo3's train() builds its ExperimentManager by the name bound in its module: use ours (same class, plus our
    # default config folder, the checks of our entries, and checkpoints to resume from: sb3_trpo_ext.zoo.resume).
    rl_zoo3.train.ExperimentManager = ResumableExperimentManager  # type: ignore[misc]
    # and its parser by the name argparse bound there (its only use of the module): ours adds --vec-env ray
    zoo_argparse = rl_zoo3.train.argparse
    rl_zoo3.train.argparse = types.SimpleNamespace(ArgumentParser=ZooArgumentParser)  # type: ignore[assignment]
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    try:
        rl_zoo3.train.train()
    except HyperparameterError as error:  # a bad or missing config entry: say what is wrong, without a traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_status)
    finally:
        rl_zoo3.train.argparse = zoo_argparse  # type: ignore[assignment]


if __name__ == "__main__":
    main()
