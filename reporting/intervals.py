"""
Interval estimates over seeds for the benchmark tables, as Agarwal et al. 2021 ("Deep Reinforcement Learning at the
Edge of the Statistical Precipice", https://arxiv.org/abs/2108.13264) recommend for a few runs per task, with scipy
only:

- the interquartile mean (IQM: the mean of the middle half of the runs, ``scipy.stats.trim_mean(x, 0.25)``) with a
  95% bootstrap confidence interval (``scipy.stats.bootstrap``, BCa where it can be computed, else percentile);
- the difference of two IQMs with its bootstrap interval (the two samples resampled independently);
- the probability of improvement ``P(X > Y)``: the Mann-Whitney U statistic over ``n m`` (the fraction of pairs of
  runs where X's is higher, ties counted half), per task with a bootstrap interval, and averaged over tasks;
- aggregates over tasks (the IQM of normalized scores of every run of every task, and the average ``P(X > Y)``) with
  a stratified bootstrap: the runs are resampled within each task, so every task keeps its number of runs;
- a verdict, ``ahead`` / ``behind`` only where the interval of the difference excludes 0 (of ``P(X > Y)``: excludes
  0.5), else ``even``; ``mean only`` where a sample has fewer than :data:`MIN_SEEDS` runs (no interval is given then:
  with one or two runs a bootstrap only replays them).

Every bootstrap draws from ``numpy.random.default_rng(seed)`` with a fixed ``seed``, so the tables regenerate
byte-identically from the same files.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 9999
SEED = 0
MIN_SEEDS = 3
"""Fewer runs than this in a sample: the value only, no interval, verdict ``mean only``."""
TRIM = 0.25
"""``trim_mean``'s proportion cut from each end: 0.25 keeps the middle half (the interquartile mean)."""

AHEAD, BEHIND, EVEN, MEAN_ONLY = "ahead", "behind", "even", "mean only"


@dataclass(frozen=True)
class Interval:
    """A point estimate and its confidence interval (``low`` and ``high`` are ``None`` when there is none)."""

    value: float
    low: float | None
    high: float | None
    n: int
    """the number of runs it rests on (of two samples: the smaller one; of several tasks: the total)"""
    method: str = ""
    """``BCa``, ``percentile``, ``stratified percentile``, ``exact`` (every resample gives the same value) or ``""``"""

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    def text(self, fmt: Callable[[float], str] = lambda value: f"{value:.3g}") -> str:
        """``value [low, high]``, or ``value [n/a]`` without an interval (``-`` without runs)."""
        if self.n == 0 or math.isnan(self.value):
            return "-"
        if not self.has_interval:
            return f"{fmt(self.value)} [n/a]"
        assert self.low is not None and self.high is not None
        return f"{fmt(self.value)} [{fmt(self.low)}, {fmt(self.high)}]"


def _array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(array)):
        raise ValueError(f"non-finite run values: {array.tolist()}")
    return array


def iqm(values: Sequence[float] | np.ndarray, axis: int = -1) -> float | np.ndarray:
    """The interquartile mean: ``trim_mean(values, 0.25)`` (the plain mean below 4 runs: nothing is cut)."""
    return stats.trim_mean(np.asarray(values, dtype=float), TRIM, axis=axis)


def _iqm_statistic(sample: np.ndarray, axis: int = -1) -> np.ndarray:
    return stats.trim_mean(sample, TRIM, axis=axis)


def _iqm_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return stats.trim_mean(x, TRIM, axis=axis) - stats.trim_mean(y, TRIM, axis=axis)


def _pairs_probability(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """``P(X > Y)`` by comparing every pair (ties half), over the last axis of both, for bootstrap resamples."""
    x = np.moveaxis(x, axis, -1)[..., :, None]
    y = np.moveaxis(y, axis, -1)[..., None, :]
    return np.mean(x > y, axis=(-2, -1)) + 0.5 * np.mean(x == y, axis=(-2, -1))


def _bootstrap(
    samples: tuple[np.ndarray, ...],
    statistic: Callable[..., np.ndarray],
    value: float,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> Interval:
    """``scipy.stats.bootstrap``: BCa where it gives finite bounds around ``value``, else the percentile interval."""
    n = min(len(sample) for sample in samples)
    if n < MIN_SEEDS:
        return Interval(value, None, None, n)
    if all(np.all(sample == sample[0]) for sample in samples):
        return Interval(value, value, value, n, "exact")  # every resample is the same sample
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BCa's "cannot be calculated" (degenerate jackknife): percentile then
            result = stats.bootstrap(
                samples,
                statistic,
                n_resamples=n_resamples,
                vectorized=True,
                paired=False,
                confidence_level=confidence,
                method=method,
                rng=np.random.default_rng(seed),
            )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
        tolerance = 1e-9 * max(1.0, abs(value))
        if math.isfinite(low) and math.isfinite(high) and low - tolerance <= value <= high + tolerance:
            return Interval(value, min(low, value), max(high, value), n, method)
    raise AssertionError("the percentile interval always exists")  # pragma: no cover


def iqm_interval(
    values: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """The IQM of one task's runs and its bootstrap confidence interval (none below :data:`MIN_SEEDS` runs)."""
    sample = _array(values)
    if sample.size == 0:
        return Interval(float("nan"), None, None, 0)
    return _bootstrap((sample,), _iqm_statistic, float(iqm(sample)), confidence, n_resamples, seed)


def difference_interval(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """``IQM(x) - IQM(y)`` on one task and its bootstrap interval, the runs of x and y resampled independently."""
    return _two_samples(x, y, _iqm_difference, lambda a, b: float(iqm(a) - iqm(b)), confidence, n_resamples, seed)


def probability_of_improvement(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """``P(X > Y)``: the Mann-Whitney U statistic of x over ``len(x) * len(y)`` (ties count half)."""
    a, b = _array(x), _array(y)
    if a.size == 0 or b.size == 0:
        return float("nan")
    return float(stats.mannwhitneyu(a, b).statistic) / (a.size * b.size)


def probability_interval(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """``P(X > Y)`` on one task and its bootstrap interval (x and y resampled independently)."""
    return _two_samples(x, y, _pairs_probability, probability_of_improvement, confidence, n_resamples, seed)


def _two_samples(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    statistic: Callable[..., Any],
    point: Callable[[np.ndarray, np.ndarray], float],
    confidence: float,
    n_resamples: int,
    seed: int,
) -> Interval:
    """A two-sample statistic's point estimate and bootstrap interval (nan and no interval when a sample is empty)."""
    a, b = _array(x), _array(y)
    if a.size == 0 or b.size == 0:
        return Interval(float("nan"), None, None, 0)
    return _bootstrap((a, b), statistic, point(a, b), confidence, n_resamples, seed)


def _stratified(
    tasks: Sequence[tuple[np.ndarray, ...]],
    statistic: Callable[[list[tuple[np.ndarray, ...]]], np.ndarray],
    value: float,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> Interval:
    """
    Percentile interval of ``statistic`` over ``n_resamples`` stratified resamples: each sample of each task is
    resampled with replacement to its own size (``statistic`` gets, per task, arrays of shape (resamples, runs)).
    """
    n = sum(len(sample) for samples in tasks for sample in samples)
    if not tasks or min(len(sample) for samples in tasks for sample in samples) < MIN_SEEDS:
        return Interval(value, None, None, n)
    rng = np.random.default_rng(seed)
    resampled = [
        tuple(sample[rng.integers(0, len(sample), size=(n_resamples, len(sample)))] for sample in samples) for samples in tasks
    ]
    distribution = np.asarray(statistic(resampled), dtype=float)
    alpha = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(distribution, [alpha, 1 - alpha]))
    if low == high == value:
        return Interval(value, value, value, n, "exact")
    return Interval(value, min(low, value), max(high, value), n, "stratified percentile")


def normalize(scores: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, dict[str, np.ndarray]]:
    """
    Min-max normalized scores per task: ``{algo: {task: runs}}`` -> the same with, on each task, 0 for the lowest
    run of any algorithm and 1 for the highest (every run 0 where all are equal). Only tasks every algorithm has.
    """
    algos = list(scores)
    tasks = [task for task in next(iter(scores.values()), {}) if all(task in scores[algo] for algo in algos)]
    normalized: dict[str, dict[str, np.ndarray]] = {algo: {} for algo in algos}
    for task in tasks:
        runs = {algo: _array(scores[algo][task]) for algo in algos}
        pooled = np.concatenate(list(runs.values()))
        low, high = float(pooled.min()), float(pooled.max())
        for algo in algos:
            normalized[algo][task] = (runs[algo] - low) / (high - low) if high > low else np.zeros_like(runs[algo])
    return normalized


def aggregate_iqm(
    scores: Mapping[str, Sequence[float] | np.ndarray],
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """
    The IQM of the (normalized) scores of every run of every task, pooled, and its stratified bootstrap interval.

    :param scores: ``{task: runs}``; every task needs :data:`MIN_SEEDS` runs for an interval
    """
    tasks = [(_array(runs),) for runs in scores.values() if len(runs)]
    if not tasks:
        return Interval(float("nan"), None, None, 0)
    value = float(iqm(np.concatenate([runs for (runs,) in tasks])))

    def pooled_iqm(resampled: list[tuple[np.ndarray, ...]]) -> np.ndarray:
        return _iqm_statistic(np.concatenate([runs for (runs,) in resampled], axis=1), axis=1)

    return _stratified(tasks, pooled_iqm, value, confidence, n_resamples, seed)


def aggregate_probability(
    x: Mapping[str, Sequence[float] | np.ndarray],
    y: Mapping[str, Sequence[float] | np.ndarray],
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> Interval:
    """
    ``P(X > Y)`` averaged over the tasks both have, and its stratified bootstrap interval (x's and y's runs
    resampled within each task).
    """
    tasks = [(_array(x[task]), _array(y[task])) for task in x if task in y and len(x[task]) and len(y[task])]
    if not tasks:
        return Interval(float("nan"), None, None, 0)
    value = float(np.mean([probability_of_improvement(a, b) for a, b in tasks]))

    def average(resampled: list[tuple[np.ndarray, ...]]) -> np.ndarray:
        return np.mean([_pairs_probability(a, b, axis=-1) for a, b in resampled], axis=0)

    return _stratified(tasks, average, value, confidence, n_resamples, seed)


def verdict(interval: Interval, null: float = 0.0) -> str:
    """
    ``ahead`` where the interval lies above ``null`` (0 for a difference, 0.5 for ``P(X > Y)``), ``behind`` where it
    lies below, else ``even``; ``mean only`` without an interval (too few runs), ``-`` without runs.
    """
    if interval.n == 0 or math.isnan(interval.value):
        return "-"
    if not interval.has_interval:
        return MEAN_ONLY
    assert interval.low is not None and interval.high is not None
    if interval.low > null:
        return AHEAD
    if interval.high < null:
        return BEHIND
    return EVEN


def compare(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> str:
    """The verdict of x against y on one task: from the interval of ``IQM(x) - IQM(y)``."""
    return verdict(difference_interval(x, y, confidence, n_resamples, seed))
