"""``python -m sb3_trpo_ext.enjoy``: rl-zoo3's enjoy with ``trpo_ext``, ``natural_pg`` and ``vine_trpo`` registered."""

from sb3_trpo_ext.zoo.enjoy import main

if __name__ == "__main__":
    main()
