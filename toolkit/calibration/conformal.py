"""Conformal p-values for novelty scores and a false-discovery-rate gate.

Split conformal: with calibration novelty scores of *known* results
``c_1..c_n``, a new score ``s`` gets ``p = (1 + #{c_i >= s}) / (n + 1)``. If the
new result is exchangeable with the known ones, ``P(p <= a) <= a``; a novel
result gets a small p-value. The smallest p-value possible is ``1 / (n + 1)``.

:class:`ConformalGate` lets an operator ask for a false discovery rate instead of
a threshold: it keeps the last ``window`` p-values and flags the newest result
when Benjamini-Hochberg at level ``fdr`` over that window rejects it. To flag a
lone novel result in a full window of ``m`` at level ``a`` its p-value must be
at most ``a / m``, so the calibration set needs ``n >= m / a`` scores.

Benjamini-Hochberg itself is :func:`scipy.stats.false_discovery_control` (SciPy is
a dependency already, and its adjusted p-values are the reference the tests
check against); this module only turns the adjusted p-values into the rejection
mask and the p-value cutoff (the largest rejected p-value) the gate reports.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.stats import false_discovery_control

from shared.errors import ConfigError, ContractError
from shared.index.thresholds import ThresholdsFile
from toolkit.calibration.roc import check_scores


def conformal_p_values(
    scores: np.ndarray | list[float] | float, calibration_scores: np.ndarray | list[float]
) -> np.ndarray:
    """Split-conformal p-values ``(1 + #{cal >= s}) / (n + 1)`` of each score."""
    cal = np.sort(check_scores(calibration_scores, "calibration scores"))
    values = np.atleast_1d(np.asarray(scores, dtype=np.float64))
    if not np.isfinite(values).all():
        raise ConfigError("novelty scores contain NaN or infinity")
    at_least = cal.size - np.searchsorted(cal, values, side="left")
    return (1.0 + at_least) / (cal.size + 1.0)


def _check_fdr(fdr: float) -> None:
    if not 0.0 < fdr < 1.0:
        raise ConfigError(f"fdr must be in (0, 1), got {fdr}")


def _bh_rejected(p: np.ndarray, fdr: float) -> np.ndarray:
    """Benjamini-Hochberg's rejections at level ``fdr`` of a 1-D float array, in its order."""
    if p.ndim != 1:
        raise ContractError(f"p-values: expected a 1-D array, got shape {p.shape}")
    if p.size == 0:
        return np.zeros(0, dtype=bool)
    try:
        adjusted = false_discovery_control(p, method="bh")
    except ValueError as exc:  # NaN or outside [0, 1]
        raise ContractError(f"p-values: {exc}") from exc
    return np.asarray(adjusted <= fdr)


def _cutoff(p: np.ndarray, rejected: np.ndarray) -> float:
    return float(p[rejected].max()) if rejected.any() else 0.0


def bh_cutoff(p_values: np.ndarray | list[float], fdr: float) -> float:
    """The Benjamini-Hochberg p-value cutoff: the largest rejected p-value (0.0 when none is)."""
    _check_fdr(fdr)
    p = np.asarray(p_values, dtype=np.float64)
    return _cutoff(p, _bh_rejected(p, fdr))


def benjamini_hochberg(p_values: np.ndarray | list[float], fdr: float) -> np.ndarray:
    """Which hypotheses BH rejects at level ``fdr`` (boolean mask in input order)."""
    _check_fdr(fdr)
    return _bh_rejected(np.asarray(p_values, dtype=np.float64), fdr)


@dataclass(frozen=True)
class GateDecision:
    novelty_score: float
    p_value: float
    novel: bool
    cutoff_p: float  # BH cutoff over the window including this result
    window_size: int


class ConformalGate:
    """Flags novel results at a requested FDR over a sliding window of recent p-values."""

    def __init__(self, calibration_scores: np.ndarray | list[float], fdr: float = 0.1, window: int = 1000):
        _check_fdr(fdr)
        if window < 1:
            raise ConfigError(f"window must be >= 1, got {window}")
        self._calibration = np.sort(check_scores(calibration_scores, "calibration scores"))
        self.fdr = fdr
        self.window = window
        self._recent: deque[float] = deque(maxlen=window)

    @classmethod
    def from_thresholds(
        cls, thresholds: ThresholdsFile, fdr: float = 0.1, window: int = 1000
    ) -> ConformalGate:
        """A gate over the calibration scores stored in a thresholds file."""
        if thresholds.conformal is None:
            raise ConfigError("the thresholds file holds no conformal calibration scores (re-run calibrate)")
        return cls(thresholds.conformal.scores, fdr=fdr, window=window)

    @property
    def n_calibration(self) -> int:
        return int(self._calibration.size)

    @property
    def min_p_value(self) -> float:
        return 1.0 / (self._calibration.size + 1.0)

    @property
    def can_flag_lone_novelty(self) -> bool:
        """Whether one novel result in a full window can ever be flagged."""
        return self.min_p_value <= self.fdr / self.window

    def p_value(self, novelty_score: float) -> float:
        return float(conformal_p_values(novelty_score, self._calibration)[0])

    def update(self, novelty_score: float) -> GateDecision:
        p = self.p_value(novelty_score)
        self._recent.append(p)
        recent = np.fromiter(self._recent, dtype=np.float64)
        rejected = _bh_rejected(recent, self.fdr)
        return GateDecision(
            float(novelty_score), p, bool(rejected[-1]), _cutoff(recent, rejected), len(self._recent)
        )

    def update_many(self, novelty_scores: Iterable[float]) -> list[GateDecision]:
        return [self.update(float(s)) for s in novelty_scores]

    def reset(self) -> None:
        self._recent.clear()
