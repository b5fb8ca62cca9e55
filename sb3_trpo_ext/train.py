"""``python -m sb3_trpo_ext.train``: rl-zoo3's train with ``trpo_ext``, ``natural_pg`` and ``vine_trpo`` registered."""

from sb3_trpo_ext.zoo.train import main

if __name__ == "__main__":
    main()
