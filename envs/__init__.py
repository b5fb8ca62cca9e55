"""
Environments of our own for the benchmarks, the tests and the docs' examples (not part of the installed package):
:class:`~envs.slot_scheduling.SlotSchedulingEnv`, a masked-action scheduling task.
"""
