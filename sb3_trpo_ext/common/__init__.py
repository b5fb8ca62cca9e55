"""Shared pieces of the TRPO family: the natural-gradient engine, the base class, rollouts, validation."""
