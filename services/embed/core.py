"""The embed stage's pure core: micro-batches of (mask, aligned print) -> unit vectors.

No Kafka, no settings from the environment: the runtime hands in decoded images
(with each clip's ``nm_per_px``, which an encoder with a canonical scale needs)
and gets vectors back. The core also keeps the time spent inside the model, so
the runtime can export a busy ratio (model seconds / wall seconds) and tell a
model-bound stage from one starved of input.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ImageError
from shared.model.encoder import Encoder
from shared.model.preprocess import check_pair, check_scales, scaled_shape

Pair = tuple[np.ndarray, np.ndarray]


class EmbedCoreConfig(Protocol):
    """What the core reads from the service's settings object."""

    @property
    def max_batch_size(self) -> int: ...


class EmbedCoreSettings(BaseModel):
    """Default settings for the core; a service's own settings may be passed instead."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_batch_size: int = Field(default=64, ge=1, le=4096)


@dataclass(frozen=True)
class EmbedStats:
    """Cumulative counters since the core was created."""

    batches: int
    items: int
    model_seconds: float
    wall_seconds: float

    @property
    def busy_ratio(self) -> float:
        return self.model_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


class EmbedCore:
    """Embeds micro-batches with one :class:`Encoder`; thread-safe counters."""

    def __init__(
        self,
        encoder: Encoder,
        settings: EmbedCoreConfig | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.encoder = encoder
        self.settings: EmbedCoreConfig = settings or EmbedCoreSettings()
        self._clock = clock
        self._lock = threading.Lock()
        self._created = clock()
        self._window_start = self._created
        self._window_model_seconds = 0.0
        self._model_seconds = 0.0
        self._batches = 0
        self._items = 0

    @property
    def model_version(self) -> str:
        return self.encoder.model_version

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def validate_item(
        self, mask: np.ndarray, aligned_print: np.ndarray, nm_per_px: float | None = None
    ) -> None:
        """Raise :class:`ImageError` for a pair the model cannot take (send it to the DLQ).

        With a canonical scale in the encoder's spec the clip's ``nm_per_px`` must be
        given, and the clip must be resamplable to it (reason ``image_scale``).
        """
        check_pair(mask, aligned_print)
        canonical = self.encoder.nm_per_px
        if canonical is not None:
            scaled_shape(mask.shape, nm_per_px, canonical, self.encoder.input_size)

    def embed_batch(self, items: Sequence[Pair], nm_per_px: Sequence[float] | None = None) -> np.ndarray:
        """``(len(items), dim)`` float32 unit vectors, in input order.

        ``nm_per_px`` holds one scale per item (needed when the encoder has a canonical
        scale). Raises :class:`ImageError` naming the first invalid item; the runtime
        may call :meth:`validate_item` per message first to keep good ones flowing.
        """
        check_scales(nm_per_px, len(items), self.encoder.nm_per_px)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        for i, (mask, aligned_print) in enumerate(items):
            try:
                self.validate_item(mask, aligned_print, None if nm_per_px is None else nm_per_px[i])
            except ImageError as exc:
                raise ImageError(f"item {i}: {exc}", reason=exc.reason) from exc
        step = self.settings.max_batch_size
        parts: list[np.ndarray] = []
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            scales = None if nm_per_px is None else nm_per_px[start : start + step]
            x = self.encoder.preprocess([m for m, _ in chunk], [p for _, p in chunk], scales)
            began = self._clock()
            vectors = self.encoder.embed_tensor(x)
            spent = self._clock() - began
            with self._lock:
                self._model_seconds += spent
                self._window_model_seconds += spent
                self._batches += 1
                self._items += len(chunk)
            parts.append(vectors)
        return np.concatenate(parts, axis=0)

    def stats(self) -> EmbedStats:
        with self._lock:
            return EmbedStats(self._batches, self._items, self._model_seconds, self._clock() - self._created)

    def take_busy_ratio(self) -> float:
        """Share of wall time spent in the model since the previous call (or creation)."""
        with self._lock:
            now = self._clock()
            wall = now - self._window_start
            ratio = self._window_model_seconds / wall if wall > 0 else 0.0
            self._window_start = now
            self._window_model_seconds = 0.0
            return min(1.0, ratio)
