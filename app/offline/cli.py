"""``lithowatch dedupe DIR`` and ``lithowatch score DIR --library LIB``: the offline verbs' command line.

Settings are the services' own (``LITHOWATCH_DEDUPE_*``, ``LITHOWATCH_ALIGN_*``,
``LITHOWATCH_MODEL_PATH``, ``LITHOWATCH_THRESHOLDS_PATH``, ``LITHOWATCH_NOVELTY_*``... from the
environment or ``--settings-file``), so a folder is judged as the stream would judge it. Reports go
to ``--out`` or standard output; progress, skipped files and the summary go to standard error.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from pathlib import Path
from typing import Any, Literal

from app.offline.inputs import Folder, Skipped, open_folder
from shared.display import terminal_safe
from shared.errors import ConfigError

Format = Literal["json", "csv"]


def register(sub: argparse._SubParsersAction) -> None:
    dedupe = sub.add_parser(
        "dedupe",
        help="find groups of duplicate results in a folder (JSON report, contact sheet)",
        description="Run a data set folder, or a folder of PNG/NPY images, through the dedupe "
        "service's core (exact digest, shift-robust hash, pixel check) in folder order, and report "
        "each kept result with its duplicates.",
    )
    dedupe.add_argument("folder", type=Path, metavar="DIR", help="a data set folder or a folder of images")
    dedupe.add_argument("--out", type=Path, default=None,
                        help="JSON report to write (default: standard output)")
    dedupe.add_argument("--sheet", type=Path, default=None, help="contact sheet PNG: each group side by side")
    dedupe.add_argument("--sheet-groups", type=int, default=100,
                        help="groups drawn on the sheet (default 100)")
    dedupe.add_argument("--sheet-duplicates", type=int, default=6,
                        help="duplicates drawn per group (default 6)")
    dedupe.add_argument("--batch-size", type=int, default=64, help="results decided together (default 64)")
    dedupe.add_argument("--quiet", action="store_true", help="no progress bar")
    dedupe.set_defaults(func=cmd_dedupe)

    score = sub.add_parser(
        "score",
        help="score every result in a folder for novelty against a library (CSV/JSON, panels)",
        description="Align, embed and score each result of a folder against a library with the "
        "services' own cores, model and thresholds.",
    )
    score.add_argument("folder", type=Path, metavar="DIR", help="a data set folder or a folder of images")
    score.add_argument("--library", type=Path, required=True, metavar="LIB",
                       help="a library snapshot folder, or a data set folder to embed as the library")
    score.add_argument("--model", type=Path, default=None,
                       help="encoder checkpoint folder (default: LITHOWATCH_MODEL_PATH, else the shipped "
                       "model)")
    score.add_argument("--thresholds", type=Path, default=None,
                       help="thresholds file from lithowatch calibrate (default: LITHOWATCH_THRESHOLDS_PATH, "
                       "else thresholds.json in the model folder, else LITHOWATCH_DEFAULT_THRESHOLD)")
    score.add_argument("--format", choices=("json", "csv"), default=None,
                       help="report format (default: from --out's suffix, else json)")
    score.add_argument("--out", type=Path, default=None, help="report to write (default: standard output)")
    score.add_argument("--panels", type=Path, default=None,
                       help="folder for a panel PNG of each novel result")
    score.add_argument("--nm-per-px", type=float, default=None,
                       help="pixel size of a plain folder's images (default: the model's own scale)")
    score.add_argument("--no-provisional", action="store_true",
                       help="judge each result against the library alone (no provisional entries)")
    score.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                       help="where the encoder runs (default: LITHOWATCH_DEVICE, else auto)")
    score.add_argument("--batch-size", type=int, default=32, help="results scored together (default 32)")
    score.add_argument("--quiet", action="store_true", help="no progress bars")
    score.set_defaults(func=cmd_score)


# -- shared plumbing ---------------------------------------------------------------------------


def _positive(value: int, option: str) -> int:
    if value < 1:
        raise ConfigError(f"{option} must be at least 1, got {value}")
    return value


def _report_skipped(skipped: Skipped) -> None:
    where = ", ".join(skipped.files) or skipped.id
    print(terminal_safe(f"skipped {where}: {skipped.message}"), file=sys.stderr)


def _write_text(path: Path | None, text: str) -> None:
    if path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the report ({exc.strerror or exc})") from exc


def _nothing_read(folder: Folder, skipped: list[Skipped]) -> ConfigError:
    first = skipped[0].message if skipped else "no results"
    return ConfigError(f"{folder.root}: none of its {len(folder)} results could be read (first: {first})")


# -- dedupe ------------------------------------------------------------------------------------


def cmd_dedupe(args: argparse.Namespace) -> int:
    from app.offline.dedupe import find_duplicates
    from services.dedupe.main import DedupeServiceSettings
    from shared.settings import load_settings

    batch_size = _positive(args.batch_size, "--batch-size")
    settings = load_settings(DedupeServiceSettings, args.settings_file)
    folder = open_folder(args.folder)
    report = find_duplicates(
        folder, settings.core_settings(), band_max_members=settings.dedupe_band_max_members,
        max_image_pixels=settings.max_image_pixels, batch_size=batch_size, progress=not args.quiet,
        on_skipped=_report_skipped,
    )
    if report.results == 0:
        raise _nothing_read(folder, report.skipped)
    _write_text(args.out, json.dumps(report.as_json(), indent=1) + "\n")
    if args.sheet is not None:
        from app.offline.sheet import write_sheet

        width, height = write_sheet(args.sheet, report.groups, _positive(args.sheet_groups, "--sheet-groups"),
                                    _positive(args.sheet_duplicates, "--sheet-duplicates"))
        print(terminal_safe(f"contact sheet {width}x{height} written to {args.sheet}"), file=sys.stderr)
    print(terminal_safe(report.summary()), file=sys.stderr)
    return 0


# -- score -------------------------------------------------------------------------------------


def _format(args: argparse.Namespace) -> Format:
    if args.format is not None:
        return "csv" if args.format == "csv" else "json"
    if args.out is not None and args.out.suffix.lower() == ".csv":
        return "csv"
    return "json"


def _thresholds_path(given: Path | None, configured: Path | None, model_dir: Path) -> tuple[Path | None, str]:
    """The thresholds file to apply and where that choice came from."""
    if given is not None:
        return given, "--thresholds"
    if configured is not None:
        return configured, "LITHOWATCH_THRESHOLDS_PATH"
    beside = model_dir / "thresholds.json"
    if beside.is_file():
        return beside, "the model folder"
    return None, "LITHOWATCH_DEFAULT_THRESHOLD (no thresholds file: calibrate with lithowatch calibrate)"


def csv_text(rows: list[dict[str, Any]]) -> str:
    from app.offline.score import CSV_COLUMNS

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def cmd_score(args: argparse.Namespace) -> int:
    from app.offline.library import open_library
    from app.offline.score import FolderScorer, ScoreReport
    from services.align.core import AlignCore
    from services.align.main import AlignServiceSettings
    from services.embed.core import EmbedCore, EmbedCoreSettings
    from services.embed.main import EmbedSettings
    from services.novelty.core import NoveltyCore
    from services.novelty.main import NoveltySettings
    from services.novelty.thresholds import ThresholdsWatcher
    from shared.blobstore import LocalBlobStore
    from shared.imageref import ImageLoader
    from shared.index import IndexSettings
    from shared.model import load_encoder
    from shared.model.default import default_model_path
    from shared.settings import load_settings

    batch_size = _positive(args.batch_size, "--batch-size")
    report_format = _format(args)
    novelty_settings = load_settings(NoveltySettings, args.settings_file)
    align_settings = load_settings(AlignServiceSettings, args.settings_file)
    embed_settings = load_settings(EmbedSettings, args.settings_file)
    if args.nm_per_px is not None and not args.nm_per_px > 0:
        raise ConfigError(f"--nm-per-px must be positive, got {args.nm_per_px}")
    # the folder first: a wrong DIR fails before the model loads
    open_folder(args.folder, args.nm_per_px or 1.0)
    model_dir = args.model or embed_settings.model_path or default_model_path()
    if embed_settings.torch_threads:
        import torch

        torch.set_num_threads(embed_settings.torch_threads)
    encoder = load_encoder(model_dir, device=args.device or embed_settings.device)
    folder = open_folder(args.folder, args.nm_per_px or encoder.nm_per_px or 1.0)
    try:
        index_settings = IndexSettings(kind=novelty_settings.index_kind)
    except ValueError as exc:
        raise ConfigError(f"LITHOWATCH_INDEX_KIND: {exc}") from exc
    library = open_library(args.library, encoder, index_settings, batch_size=batch_size,
                           progress=not args.quiet)
    if embed_settings.fuse_batchnorm:  # as the embed service runs it (the library is built unfused, as
        encoder.fuse_for_inference()   # lithowatch library build does)
    thresholds_path, source = _thresholds_path(args.thresholds, novelty_settings.thresholds_path,
                                               Path(model_dir))
    watcher = ThresholdsWatcher(thresholds_path, novelty_settings.default_threshold, encoder.model_version,
                                library_dim=lambda: library.state.dim)
    watcher.verify()
    config = novelty_settings.novelty_config()
    if args.no_provisional:
        config = dataclasses.replace(config, provisional=False)
    novelty = NoveltyCore(lambda: library.state, watcher, config)
    loader = ImageLoader(None, align_settings.max_image_pixels)
    align = AlignCore(loader, align_settings.registration(), align_settings.align_on_failure, None,
                      align_settings.inline_image_limit_bytes)
    embed = EmbedCore(encoder, EmbedCoreSettings(max_batch_size=batch_size))
    panel_loader = None
    if args.panels is not None and library.kind == "snapshot":  # neighbour images by blob URI
        panel_loader = ImageLoader(LocalBlobStore(novelty_settings.blob_root),
                                   novelty_settings.max_image_pixels)
    scorer = FolderScorer(library, watcher, novelty, align, embed, novelty_settings.max_image_pixels,
                          panel_loader)
    policy = watcher.policy
    report = ScoreReport(
        folder, library,
        model={"path": str(model_dir), "model_version": encoder.model_version, "dim": encoder.dim},
        thresholds={
            "path": str(thresholds_path) if thresholds_path is not None else None,
            "source": source,
            "method": str(policy.file.method),
            "global_threshold": policy.global_threshold,
            "clusters": len(policy.file.clusters or []),
        },
    )
    scorer.score_folder(folder, report, batch_size=batch_size, panels=args.panels, progress=not args.quiet,
                        on_skipped=_report_skipped)
    if len(report.skipped) == len(report.rows):
        raise _nothing_read(folder, report.skipped)
    if report_format == "csv":
        text = csv_text([row.as_csv() for row in report.rows])
    else:
        text = json.dumps(report.as_json(), indent=1) + "\n"
    _write_text(args.out, text)
    if args.panels is not None:
        print(terminal_safe(f"{report.count('novel')} panels written to {args.panels}"), file=sys.stderr)
    print(terminal_safe(report.summary()), file=sys.stderr)
    return 0
