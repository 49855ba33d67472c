"""SOCS kernel files in the layout published with the ICCAD-2013 mask optimization contest.

A kernel folder holds ``scales.txt`` (first line: the kernel count; then one
weight a line) and ``fh0.bin``, ``fh1.bin``, ... Each ``.bin`` is a header of
big-endian int32 words starting ``nx ny 2`` (2 = complex components; the
published files carry six words, 24 bytes), followed by ``nx * ny`` complex
values as big-endian float32 pairs ``(re, im)``: the kernel in the frequency
domain with DC at ``[nx // 2, ny // 2]``. Values are stored x-major (the
contest's reference reader transposes them onto the image's ``[row, col]``).
The header length is taken from the file size, so 20- and 24-byte headers both
read.

The published kernels are for a 2048 nm window at 1 nm per pixel; pass
``period_nm`` for files made for another window. Weights are rescaled so that a
clear field images to 1 (thresholds are then relative to the clear field).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from shared.errors import ConfigError
from toolkit.litho.optics import SocsKernels

CONTEST_PERIOD_NM = 2048.0
HEADER_WORDS = 6


def _read_scales(path: Path) -> list[float]:
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc
    rows = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not rows:
        raise ConfigError(f"{path}:1: empty scales file (expected the kernel count on line 1)")
    line_no, first = rows[0]
    try:
        count = int(first.split()[0])
    except ValueError as exc:
        raise ConfigError(f"{path}:{line_no}: expected the kernel count, got {first!r}") from exc
    if count <= 0:
        raise ConfigError(f"{path}:{line_no}: kernel count must be positive, got {count}")
    weights: list[float] = []
    for line_no, text in rows[1:]:
        for token in text.split():
            try:
                weights.append(float(token))
            except ValueError as exc:
                raise ConfigError(f"{path}:{line_no}: not a number: {token!r}") from exc
    if len(weights) < count:
        raise ConfigError(f"{path}: declares {count} kernels but lists {len(weights)} weights")
    return weights[:count]


def read_kernel_bin(path: str | Path) -> np.ndarray:
    """One ``fhN.bin`` file as a complex128 ``(ny, nx)`` array (row = y), DC at the centre."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    if len(data) < 12:
        raise ConfigError(f"{path}: truncated kernel file ({len(data)} bytes, no header)")
    nx, ny, comps = struct.unpack(">3i", data[:12])
    if nx <= 0 or ny <= 0 or nx % 2 == 0 or ny % 2 == 0 or nx != ny or nx > 4097:
        raise ConfigError(f"{path}: header declares a {nx}x{ny} kernel; expected odd, square sizes")
    if comps != 2:
        raise ConfigError(f"{path}: header word 3 is {comps}; expected 2 (complex values)")
    payload = 8 * nx * ny
    header = len(data) - payload
    if header < 12 or header % 4 or header > 64:
        raise ConfigError(
            f"{path}: {len(data)} bytes do not hold a {nx}x{ny} complex kernel after its header"
        )
    values = np.frombuffer(data, dtype=">f4", count=2 * nx * ny, offset=header).astype(np.float64)
    if not np.isfinite(values).all():
        raise ConfigError(f"{path}: kernel contains NaN or infinity")
    kernel = (values[0::2] + 1j * values[1::2]).reshape(nx, ny)  # [x, y] in file order
    return np.ascontiguousarray(kernel.T)


def write_kernel_bin(path: str | Path, kernel: np.ndarray) -> None:
    """Write a ``(ny, nx)`` complex kernel (row = y, DC at the centre) as one ``fhN.bin`` file."""
    kernel = np.asarray(kernel)
    ny, nx = kernel.shape
    header = struct.pack(f">{HEADER_WORDS}i", nx, ny, 2, *([0] * (HEADER_WORDS - 3)))
    values = np.empty(2 * nx * ny, dtype=">f4")
    flat = kernel.T.reshape(-1)  # x-major, as the contest stores it
    values[0::2] = flat.real
    values[1::2] = flat.imag
    Path(path).write_bytes(header + values.tobytes())


def read_kernel_dir(folder: str | Path, period_nm: float = CONTEST_PERIOD_NM) -> SocsKernels:
    """Read ``scales.txt`` and ``fh*.bin`` from ``folder`` into normalised :class:`SocsKernels`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a kernel folder")
    weights = _read_scales(folder / "scales.txt")
    kernels = []
    for i in range(len(weights)):
        kernels.append(read_kernel_bin(folder / f"fh{i}.bin"))
    shapes = {k.shape for k in kernels}
    if len(shapes) != 1:
        raise ConfigError(f"{folder}: kernels of different sizes {sorted(shapes)}")
    if not period_nm > 0:
        raise ConfigError(f"kernel period must be positive, got {period_nm}")
    socs = SocsKernels(np.stack(kernels), np.asarray(weights, dtype=np.float64), float(period_nm))
    return socs.normalised()


def write_kernel_dir(folder: str | Path, socs: SocsKernels) -> None:
    """Write kernels and weights in the contest layout (for exchange with other tools)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [str(len(socs.weights))] + [f"{w:.9g}" for w in socs.weights]
    (folder / "scales.txt").write_text("\n".join(lines) + "\n", encoding="ascii")
    for i, kernel in enumerate(socs.kernels):
        write_kernel_bin(folder / f"fh{i}.bin", kernel)
