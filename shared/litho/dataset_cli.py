"""``lithowatch dataset``: make simulated data sets, import user layouts, draw a contact sheet.

- ``dataset make``: random layouts of the chosen families, each rendered under
  several variants (one ``group`` per layout), optional defects with ground truth.
- ``dataset from-layout``: ``.glp`` clips or GDSII/OASIS files cut into windows and
  simulated (with the computed optics, or SOCS kernels read from contest files).
- ``dataset sheet``: a PNG with every family and every defect type, mask beside print.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from shared.dataset import DatasetWriter
from shared.errors import ConfigError
from shared.litho.families import FAMILIES
from shared.litho.farm import FarmGenerator, context_pad_px, simulate_clip
from shared.litho.kernel_io import CONTEST_PERIOD_NM, read_kernel_dir
from shared.litho.layout_io import layout_windows, read_layout
from shared.litho.simulator import LithoSimulator, ResistSettings


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse ``type`` accepting only positive numbers of ``kind``."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value

    return parse


def _families(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown families {unknown} (known: {', '.join(FAMILIES)})")
    return names


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dataset`` command and its subcommands."""
    parser = subparsers.add_parser("dataset", help="make, import or inspect lithography data sets")
    sub = parser.add_subparsers(dest="dataset_command", required=True)

    make = sub.add_parser("make", help="simulate random layouts into a data set folder")
    make.add_argument("--families", type=_families, default=list(FAMILIES), help="comma-separated families")
    make.add_argument("--n", type=_positive(int), default=100, help="number of layouts")
    make.add_argument("--variants", type=_positive(int), default=4, help="results per layout (one group)")
    make.add_argument("--defect-rate", type=float, default=0.0, help="probability a result carries a defect")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--size", type=_positive(int), default=256, help="clip size in pixels")
    make.add_argument("--nm-per-px", type=_positive(float), default=4.0)
    make.add_argument("--max-shift-px", type=int, default=16, help="largest window shift of a variant")
    make.add_argument("--format", choices=("png", "npy"), default="png", help="image files")
    make.add_argument("--out", type=Path, required=True)
    make.set_defaults(func=cmd_make)

    imp = sub.add_parser("from-layout", help="cut .glp / GDSII / OASIS layouts into simulated windows")
    imp.add_argument("files", nargs="+", type=Path, help=".glp, .gds or .oas files")
    imp.add_argument("--kernels", type=Path, default=None, help="folder with scales.txt and fh*.bin")
    imp.add_argument(
        "--kernel-period-nm",
        type=_positive(float),
        default=CONTEST_PERIOD_NM,
        help="window the kernel files were made for (contest: 2048)",
    )
    imp.add_argument("--window-nm", type=_positive(float), default=1024.0)
    imp.add_argument("--nm-per-px", type=_positive(float), default=4.0)
    imp.add_argument("--layer", default=None, help="glp layer name (M1) or GDS 'L' / 'L/D'; default all")
    imp.add_argument("--dose", type=_positive(float), default=1.0)
    imp.add_argument(
        "--threshold", type=_positive(float), default=None, help="resist threshold (clear field = 1)"
    )
    imp.add_argument("--defocus-nm", type=float, default=0.0)
    imp.add_argument("--format", choices=("png", "npy"), default="png")
    imp.add_argument("--out", type=Path, required=True)
    imp.set_defaults(func=cmd_from_layout)

    sheet = sub.add_parser("sheet", help="draw every family and defect type into one PNG")
    sheet.add_argument("--out", type=Path, default=Path("sheet.png"))
    sheet.add_argument("--seed", type=int, default=0)
    sheet.add_argument("--size", type=_positive(int), default=256)
    sheet.add_argument("--nm-per-px", type=_positive(float), default=4.0)
    sheet.set_defaults(func=cmd_sheet)


def cmd_make(args: argparse.Namespace) -> int:
    if not 0.0 <= args.defect_rate <= 1.0:
        raise ConfigError(f"--defect-rate must lie in [0, 1], got {args.defect_rate}")
    if args.max_shift_px < 0:
        raise ConfigError("--max-shift-px must not be negative")
    farm = FarmGenerator(
        seed=args.seed,
        size_px=args.size,
        nm_per_px=args.nm_per_px,
        families=args.families,
        defect_rate=args.defect_rate,
    )
    farm.window_nm((args.max_shift_px, args.max_shift_px))  # fails early if shifts leave the canvas
    total = args.n * args.variants
    defects = 0
    with DatasetWriter(args.out, image_format=args.format) as writer:
        samples = farm.samples(args.n, args.variants, max_shift_px=args.max_shift_px)
        for sample in tqdm(samples, total=total, desc="simulating", unit="result"):
            writer.add(sample.id, sample.mask, sample.simulated, sample.nm_per_px, sample.labels)
            defects += sample.labels["defect"] != "none"
    print(f"wrote {total} results of {args.n} layouts ({defects} with defects) to {args.out}")
    return 0


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "layout"


def cmd_from_layout(args: argparse.Namespace) -> int:
    kernels = read_kernel_dir(args.kernels, args.kernel_period_nm) if args.kernels is not None else None
    if kernels is not None and args.defocus_nm != 0:
        raise ConfigError("--defocus-nm needs the computed optics; kernel files have a fixed focus")
    size = args.window_nm / args.nm_per_px
    if abs(size - round(size)) > 1e-6:
        raise ConfigError(f"--window-nm {args.window_nm} is not a whole number of {args.nm_per_px} nm pixels")
    size_px = round(size)
    resist = ResistSettings() if args.threshold is None else ResistSettings(threshold=args.threshold)
    simulator = LithoSimulator(size_px, args.nm_per_px, resist=resist, kernels=kernels)
    pad_px = context_pad_px(size_px, args.nm_per_px)
    layouts = [(path, read_layout(path, args.layer)) for path in args.files]
    count = blank = 0
    with DatasetWriter(args.out, image_format=args.format) as writer:
        for path, layout in tqdm(layouts, desc="layouts", unit="file"):
            group = _safe_id(path.stem)
            for index, origin in enumerate(layout_windows(layout, args.window_nm)):
                mask, printed = simulate_clip(
                    simulator, layout, origin, size_px, pad_px, dose=args.dose, defocus_nm=args.defocus_nm
                )
                labels = {
                    "family": "imported",
                    "group": group,
                    "variant": index,
                    "source": path.name,
                    "layer": args.layer or "all",
                    "window_x_nm": round(origin[0] + float(layout.params["offset_x_nm"]), 3),
                    "window_y_nm": round(origin[1] + float(layout.params["offset_y_nm"]), 3),
                    "shift_x_px": 0,
                    "shift_y_px": 0,
                    "dose": args.dose,
                    "defocus_nm": args.defocus_nm,
                    "bias_nm": 0.0,
                    "defect": "none",
                    "severity": 0.0,
                    "optics": "kernel_files" if kernels is not None else "computed",
                }
                writer.add(f"{group}-{index:04d}", mask, printed, args.nm_per_px, labels)
                count += 1
                blank += float(printed.max()) < 0.5
    if count == 0:
        raise ConfigError("the layouts hold no shapes to simulate")
    print(f"wrote {count} windows of {len(layouts)} layout files to {args.out}")
    if blank:
        print(
            f"note: {blank} windows print nothing (features below resolution at this dose and threshold;"
            " try --dose or --threshold)"
        )
    return 0


def cmd_sheet(args: argparse.Namespace) -> int:
    from shared.litho.sheet import make_contact_sheet

    out = make_contact_sheet(args.out, seed=args.seed, size_px=args.size, nm_per_px=args.nm_per_px)
    print(f"wrote {out}")
    return 0
