"""What ``dedupe`` and ``score`` read: a lithowatch data set folder, or a plain folder of images.

- A folder with ``manifest.jsonl`` is a data set (:func:`shared.dataset.read_dataset`): each
  line is one result (mask and print), its id the result id, its labels carried along.
- Any other folder is searched, subfolders included, for ``.png`` and ``.npy`` files. Two files
  whose names differ only by a ``_mask`` and a ``_sim`` / ``_simulated`` / ``_print`` suffix
  (``-`` or ``.`` separate too; the names ``lithowatch dataset`` writes) are one result. Every
  other image is a result of its own whose mask and print are that one image: a folder of
  prints only (or masks only) is compared image against image.
  A result id is the file's path under the folder without its suffixes, each run of characters a
  result id cannot hold replaced by ``_`` (``-2``, ``-3``... when two paths come out the same).

Results reach the cores exactly as ``lithowatch simfarm --dataset`` publishes them
(:func:`services.simfarm.core.replay`), so a folder and its stream are judged alike. A file
that cannot be read is a :class:`Skipped` entry, never fatal; a folder that is missing,
unreadable, or holds neither a manifest nor an image is a ConfigError (one line).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from services.simfarm.core import replay
from shared.contracts import SimResult
from shared.dataset import MANIFEST_NAME, Dataset, DatasetItem, read_dataset
from shared.errors import ConfigError, InputError

JOB_ID = "offline"
IMAGE_SUFFIXES = (".png", ".npy")
MASK_ROLES = ("mask",)
PRINT_ROLES = ("sim", "simulated", "print")
_ROLE = re.compile(r"^(?P<base>.+?)[_.\-](?P<role>mask|simulated|sim|print)$", re.IGNORECASE)
_NOT_IN_ID = re.compile(r"[^A-Za-z0-9._:\-]+")
MAX_ID_CHARS = 200

FolderKind = Literal["dataset", "images"]


@dataclass(frozen=True)
class Skipped:
    """A result (or file) left out, with the reason a stage would dead-letter it for."""

    id: str
    files: tuple[str, ...]
    reason: str
    message: str

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "files": list(self.files), "reason": self.reason, "message": self.message}


@dataclass(frozen=True)
class Folder:
    """A folder of results: its kind and the results as data set items (in a fixed order)."""

    root: Path
    kind: FolderKind
    dataset: Dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def files_of(self, item: DatasetItem) -> tuple[str, ...]:
        """The item's files relative to the folder (one file for a lone image)."""
        paths = [item.mask_path]
        if item.simulated_path != item.mask_path:
            paths.append(item.simulated_path)
        return tuple(_relative(path, self.root) for path in paths)

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.root), "kind": self.kind, "results": len(self)}


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _check_folder(root: Path) -> None:
    if not root.exists():
        raise ConfigError(f"{root}: no such folder")
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder")


def _image_files(root: Path) -> list[Path]:
    """Every .png / .npy file under ``root`` (hidden files and folders left out), in path order."""
    found: list[Path] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            raise ConfigError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from exc
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                pending.append(entry)
            elif entry.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                found.append(entry)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def result_id_for(relative: str, taken: set[str]) -> str:
    """A valid, unused result id for a file's relative path (without suffixes)."""
    base = _NOT_IN_ID.sub("_", relative).strip("_") or "image"
    base = base[:MAX_ID_CHARS - 8]
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    taken.add(candidate)
    return candidate


def _image_items(root: Path, files: Sequence[Path], nm_per_px: float) -> list[DatasetItem]:
    """Pairs (``X_mask`` + ``X_sim``/``X_print``) and lone images as items, in path order."""
    roles: dict[str, dict[str, Path]] = {}
    lone: list[tuple[str, Path]] = []
    for path in files:
        relative = path.relative_to(root).with_suffix("").as_posix()
        match = _ROLE.match(relative)
        if match is None:
            lone.append((relative, path))
            continue
        role = "mask" if match["role"].lower() in MASK_ROLES else "print"
        slot = roles.setdefault(match["base"], {})
        if role in slot:  # X_sim and X_print both there: the second stands alone
            lone.append((relative, path))
        else:
            slot[role] = path
    order: list[tuple[str, Path, Path]] = []
    for base, slot in roles.items():
        if "mask" in slot and "print" in slot:
            order.append((base, slot["mask"], slot["print"]))
        else:
            (path,) = slot.values()
            lone.append((path.relative_to(root).with_suffix("").as_posix(), path))
    order.extend((relative, path, path) for relative, path in lone)
    order.sort(key=lambda entry: entry[0])
    taken: set[str] = set()
    resolved = root.resolve()
    return [
        DatasetItem(result_id_for(relative, taken), resolved / mask.relative_to(root),
                    resolved / printed.relative_to(root), nm_per_px, {})
        for relative, mask, printed in order
    ]


def open_folder(path: str | Path, nm_per_px: float = 1.0) -> Folder:
    """The results in ``path``: a data set, or a plain folder of images at ``nm_per_px``."""
    root = Path(path)
    _check_folder(root)
    if (root / MANIFEST_NAME).is_file():
        return Folder(root, "dataset", read_dataset(root))
    if nm_per_px <= 0:
        raise ConfigError(f"--nm-per-px must be positive, got {nm_per_px}")
    files = _image_files(root)
    if not files:
        raise ConfigError(f"{root}: no {MANIFEST_NAME} and no PNG or NPY images (nothing to read)")
    return Folder(root, "images", Dataset(root, tuple(_image_items(root, files, nm_per_px))))


def to_result(folder: Folder, item: DatasetItem) -> SimResult:
    """The result as ``lithowatch simfarm --dataset`` would publish it; InputError when unreadable."""
    try:
        return next(iter(replay(Dataset(folder.root, (item,)), job_id=JOB_ID)))
    except ConfigError as exc:  # a missing, unreadable or undecodable file
        raise InputError(str(exc), reason="unreadable") from exc
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InputError(f"{item.id}: not a valid result ({problems})", reason="invalid_result") from exc


def read_results(
    folder: Folder, items: Sequence[DatasetItem]
) -> Iterator[tuple[DatasetItem, SimResult | Skipped]]:
    """Each item with its result, or the :class:`Skipped` entry that says why it has none."""
    for item in items:
        try:
            yield item, to_result(folder, item)
        except InputError as exc:
            yield item, Skipped(item.id, folder.files_of(item), exc.reason, str(exc))


def batches(items: Sequence[DatasetItem], size: int) -> Iterator[Sequence[DatasetItem]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
