"""Score drift: how far the stream's recent novelty scores have moved from calibration.

Pure logic (no metrics, no I/O): the stage adapter feeds it every score and exports what it
reads (:mod:`services.novelty.stage`). The baseline is the thresholds file's
:class:`~shared.index.thresholds.ScoreReference`: the scores of known results at
calibration (:mod:`toolkit.calibration.reference`). Over a count-based sliding window (the
last ``window_size`` scores of one model) two statistics are read:

- the **population stability index** over the reference's bins (equal-mass deciles at
  calibration): ``sum((a - e) * ln(a / e))`` over the bins, ``a`` the window's share of
  scores in a bin and ``e`` the reference's, both floored at :data:`PSI_FLOOR` so an empty
  bin counts as very unlikely rather than impossible. Rule of thumb: under 0.1 stable, 0.1 to
  0.25 moving, above 0.25 shifted. A window of ``n`` scores drawn from the reference itself
  reads about ``(bins - 1) / n`` (0.018 for 10 bins and 500 scores);
- the **KS distance**: the largest gap between the window's empirical CDF and the
  reference's (linear between its quantiles). Drawn from the reference, a window of ``n``
  scores stays under about ``1.63 / sqrt(n)`` in 99 % of windows.

Both are blind to direction; the score histograms beside them say which way scores moved.

Windows are kept per model version: each model's scores are compared with its own
thresholds file's reference. A model whose results stop coming (after a switch-over) is
forgotten once a whole window of other models' scores has arrived, so its last reading
does not linger. A model whose thresholds carry no reference (files calibrated before it was
recorded) gets no reading, and ``on_missing_reference`` is called once for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from shared.index.thresholds import ScoreReference

PSI_FLOOR = 1e-4
WINDOW_SIZE_DEFAULT = 500
STATISTICS = ("psi", "ks")


def _scores(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.float64)
    return array.ravel()


def bin_shares(reference: ScoreReference, scores: Iterable[float]) -> np.ndarray:
    """The share of ``scores`` in each of the reference's bins."""
    values = _scores(scores)
    if values.size == 0:
        return np.zeros(len(reference.bin_proportions))
    edges = np.asarray(reference.bin_edges, dtype=np.float64)
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
    return counts / values.size


def population_stability_index(reference: ScoreReference, scores: Iterable[float]) -> float:
    """PSI of ``scores`` against the reference's bins (0 for identical shares)."""
    actual = np.maximum(bin_shares(reference, scores), PSI_FLOOR)
    expected = np.maximum(np.asarray(reference.bin_proportions, dtype=np.float64), PSI_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def reference_cdf(reference: ScoreReference, values: np.ndarray) -> np.ndarray:
    """The reference's CDF at ``values``: linear between its quantiles, 0 below, 1 above."""
    quantiles = np.asarray(reference.quantiles, dtype=np.float64)
    probabilities = np.linspace(0.0, 1.0, quantiles.size)
    # ties (a run of equal quantiles) jump at once: keep the highest probability of each value
    unique, last = np.unique(quantiles[::-1], return_index=True)
    top = probabilities[::-1][last]
    if unique.size == 1:
        return (values >= unique[0]).astype(np.float64)
    return np.interp(values, unique, top, left=0.0, right=1.0)


def ks_distance(reference: ScoreReference, scores: Iterable[float]) -> float:
    """Largest gap between the empirical CDF of ``scores`` and the reference's CDF.

    The reference's CDF is continuous but for its jump at the smallest score, so between two
    window scores (where the window's CDF is flat) the gap is largest at either end: it is read
    at each window score, from the right and from the left.
    """
    values = np.sort(_scores(scores))
    n = values.size
    if n == 0:
        return 0.0
    right = reference_cdf(reference, values)
    left = np.where(values > reference.quantiles[0], right, 0.0)
    window_right = np.searchsorted(values, values, side="right") / n
    window_left = np.searchsorted(values, values, side="left") / n
    gap = max(float(np.max(np.abs(window_right - right))), float(np.max(np.abs(left - window_left))))
    return min(gap, 1.0)


@dataclass(frozen=True)
class DriftReading:
    """The drift statistics of one model's window of scores."""

    model_version: str
    psi: float
    ks: float
    n_scores: int

    def statistic(self, name: str) -> float:
        return {"psi": self.psi, "ks": self.ks}[name]


@dataclass
class _Window:
    scores: deque[float]
    last_seen: int = 0


@dataclass
class ScoreDrift:
    """Sliding windows of novelty scores per model, read against each model's reference.

    ``reference(model_version)`` is the live thresholds' reference for that model (None when
    the thresholds of that model carry none, or are not the live ones). A reading needs a full
    window: over fewer scores the statistics swing too much to alert on.
    """

    window_size: int
    reference: Callable[[str], ScoreReference | None]
    on_missing_reference: Callable[[str], None] = lambda _model_version: None
    windows: dict[str, _Window] = field(default_factory=dict)
    _seen: int = 0
    _reported_missing: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.window_size < 1:
            raise ValueError(f"window_size must be at least 1, got {self.window_size}")

    def observe(self, model_version: str, novelty_score: float) -> None:
        """One scored result's score."""
        self._seen += 1
        window = self.windows.get(model_version)
        if window is None:
            window = self.windows[model_version] = _Window(deque(maxlen=self.window_size))
        window.scores.append(float(novelty_score))
        window.last_seen = self._seen
        for version, other in list(self.windows.items()):
            if self._seen - other.last_seen >= self.window_size:
                del self.windows[version]  # a whole window of other models' scores since its last one

    def readings(self) -> dict[str, DriftReading | None]:
        """Per model with a window: its reading, or None (window not full yet, or no reference)."""
        out: dict[str, DriftReading | None] = {}
        for version, window in self.windows.items():
            reference = self.reference(version)
            if reference is None:
                if version not in self._reported_missing:
                    self._reported_missing.add(version)
                    self.on_missing_reference(version)
                out[version] = None
                continue
            self._reported_missing.discard(version)
            if len(window.scores) < self.window_size:
                out[version] = None
                continue
            scores = np.fromiter(window.scores, dtype=np.float64, count=len(window.scores))
            out[version] = DriftReading(
                model_version=version,
                psi=population_stability_index(reference, scores),
                ks=ks_distance(reference, scores),
                n_scores=int(scores.size),
            )
        return out
