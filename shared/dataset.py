"""Data sets on disk: a folder with ``manifest.jsonl`` and the image files.

One JSON object a line: ``id``, ``mask``, ``simulated`` (paths relative to the
folder; PNG 8/16-bit grayscale or ``.npy`` float32), ``nm_per_px`` and free-form
``labels`` (``family``, ``group``, ``defect``, ``severity``...). Every offline
command reads this one format through :func:`read_dataset`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.errors import ConfigError
from shared.imaging import read_image_file, write_image_file

MANIFEST_NAME = "manifest.jsonl"
LabelValue = str | int | float | bool | None


@dataclass(frozen=True)
class DatasetItem:
    """One line of a manifest, with absolute image paths."""

    id: str
    mask_path: Path
    simulated_path: Path
    nm_per_px: float
    labels: dict[str, LabelValue] = field(default_factory=dict)

    def load_mask(self) -> np.ndarray:
        return read_image_file(self.mask_path)

    def load_simulated(self) -> np.ndarray:
        return read_image_file(self.simulated_path)

    def label(self, name: str, default: LabelValue = None) -> LabelValue:
        return self.labels.get(name, default)


@dataclass(frozen=True)
class Dataset:
    """A loaded manifest. Images are read lazily, one item at a time."""

    root: Path
    items: tuple[DatasetItem, ...]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[DatasetItem]:
        return iter(self.items)

    def labels_of(self, name: str) -> list[LabelValue]:
        return [item.labels.get(name) for item in self.items]

    def subset(self, keep: Sequence[int]) -> Dataset:
        return Dataset(self.root, tuple(self.items[i] for i in keep))


def read_dataset(root: str | Path) -> Dataset:
    """Read ``root/manifest.jsonl``; every error names the file and line."""
    root = Path(root)
    manifest = root / MANIFEST_NAME
    if not manifest.is_file():
        raise ConfigError(f"{root}: no {MANIFEST_NAME} (is this a lithowatch data set folder?)")
    items: list[DatasetItem] = []
    seen: set[str] = set()
    root_resolved = root.resolve()
    with manifest.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{manifest}:{line_no}"
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{where}: invalid JSON ({exc.msg})") from exc
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}: expected a JSON object")
            try:
                item_id = str(raw["id"])
                mask_rel = str(raw["mask"])
                sim_rel = str(raw["simulated"])
                nm_per_px = float(raw["nm_per_px"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{where}: needs id, mask, simulated and nm_per_px ({exc})") from exc
            if item_id in seen:
                raise ConfigError(f"{where}: duplicate id {item_id!r}")
            seen.add(item_id)
            if not nm_per_px > 0:
                raise ConfigError(f"{where}: nm_per_px must be positive")
            labels = raw.get("labels") or {}
            if not isinstance(labels, dict):
                raise ConfigError(f"{where}: labels must be an object")
            paths = []
            for rel in (mask_rel, sim_rel):
                path = (root / rel).resolve()
                if not path.is_relative_to(root_resolved):
                    raise ConfigError(f"{where}: path {rel!r} escapes the data set folder")
                paths.append(path)
            items.append(DatasetItem(item_id, paths[0], paths[1], nm_per_px, dict(labels)))
    if not items:
        raise ConfigError(f"{manifest}: empty manifest")
    return Dataset(root, tuple(items))


class DatasetWriter:
    """Writes images and manifest lines; use as a context manager."""

    def __init__(self, root: str | Path, image_format: str = "png") -> None:
        if image_format not in ("png", "npy"):
            raise ConfigError(f"image format must be png or npy, not {image_format!r}")
        self.root = Path(root)
        self.image_format = image_format
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self._handle = (self.root / MANIFEST_NAME).open("w", encoding="utf-8")
        self.count = 0

    def add(
        self,
        item_id: str,
        mask: np.ndarray,
        simulated: np.ndarray,
        nm_per_px: float,
        labels: dict[str, Any] | None = None,
    ) -> None:
        ext = self.image_format
        mask_rel = f"images/{item_id}_mask.{ext}"
        sim_rel = f"images/{item_id}_sim.{ext}"
        write_image_file(self.root / mask_rel, mask)
        write_image_file(self.root / sim_rel, simulated)
        line = {
            "id": item_id,
            "mask": mask_rel,
            "simulated": sim_rel,
            "nm_per_px": nm_per_px,
            "labels": labels or {},
        }
        self._handle.write(json.dumps(line, sort_keys=True) + "\n")
        self.count += 1

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
