"""Speed and accuracy of the lithography emulator, single-threaded.

Prints, in one run:
- SOCS kernel build time (cold cache) for the clip window and the farm's padded window;
- aerial image time at 256x256: band-limited SOCS (this package) against two
  baselines: SOCS with full-size inverse FFTs per kernel, and direct Abbe
  summation over source points; and the SOCS-vs-Abbe max error;
- resist print time at 256x256;
- farm throughput (layout generation + rasterization + simulation with context),
  clean and with defects, as results per CPU-second (= per core) and per wall second.

Run: ``python bench/litho_bench.py [--results N]``. Other work on the machine
changes wall-clock figures; CPU-second figures are steadier.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import time
from collections.abc import Callable

import numpy as np
import scipy.fft

from toolkit.litho import (
    FAMILIES,
    FarmGenerator,
    LithoSimulator,
    OpticsSettings,
    abbe_aerial,
    compute_socs_kernels,
    rasterize,
)


def best_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best and median wall time of ``fn`` in ms."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times), 1000 * float(np.median(times))


def full_size_socs(mask: np.ndarray, sim: LithoSimulator) -> np.ndarray:
    """Baseline: SOCS with one full-size inverse FFT per kernel (no band-limited small grid)."""
    n = mask.shape[0]
    socs = sim.kernels(n)
    k = socs.half_width
    spec = scipy.fft.fft2(mask, workers=1)
    idx = np.arange(-k, k + 1) % n
    image = np.zeros((n, n))
    for kernel, weight in zip(socs.kernels, socs.weights, strict=True):
        full = np.zeros((n, n), dtype=np.complex128)
        full[np.ix_(idx, idx)] = kernel * spec[np.ix_(idx, idx)]
        field = scipy.fft.ifft2(full, workers=1)
        image += weight * (field.real**2 + field.imag**2)
    return image


def farm_rate(defect_rate: float, results: int, seed: int) -> tuple[float, float, int]:
    farm = FarmGenerator(seed=seed, defect_rate=defect_rate)
    # Warm the kernel cache for every defocus the variants can draw (a farm runs for hours).
    for defocus in sorted({-60.0, -40.0, -20.0, 0.0, 20.0, 40.0, 60.0}):
        farm.simulator.kernels(farm.sim_px, defocus)
    variants = 4
    wall0, cpu0 = time.perf_counter(), time.process_time()
    done = defects = 0
    for sample in farm.samples(max(1, results // variants), variants):
        done += 1
        defects += sample.labels["defect"] != "none"
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return done / cpu, done / wall, defects


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=200, help="farm results per throughput figure")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(
        f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
        "(other work may be running)",
    )

    optics = OpticsSettings()
    print(
        f"\n== SOCS kernel build (cold cache, {optics.n_kernels} kernels,",
        f"source grid {optics.source_grid}) ==",
    )
    for size_px in (256, FarmGenerator().sim_px):
        compute_socs_kernels.cache_clear()
        start = time.perf_counter()
        socs = compute_socs_kernels(optics, size_px * 4.0, 0.0)
        build_ms = 1000 * (time.perf_counter() - start)
        print(
            f"  window {size_px} px @ 4 nm ({size_px * 4} nm): {build_ms:7.1f} ms,",
            f"kernels {socs.kernels.shape}",
        )

    rng = np.random.default_rng(0)
    rects = []
    for _ in range(40):
        x, y = rng.uniform(0, 900, 2)
        w, h = rng.uniform(50, 300, 2)
        rects.append((x, y, x + w, y + h))
    mask = rasterize(np.array(rects), (0.0, 0.0), 256, 4.0)
    sim = LithoSimulator()
    sim.aerial(mask)

    print("\n== aerial image, 256x256 @ 4 nm, one thread ==")
    fast_best, fast_med = best_ms(lambda: sim.aerial(mask), args.repeats)
    full_best, full_med = best_ms(lambda: full_size_socs(mask, sim), max(3, args.repeats // 5))
    abbe_best, _ = best_ms(lambda: abbe_aerial(mask, 4.0, optics), 2)
    print(f"  band-limited SOCS (this package) : best {fast_best:8.2f} ms  median {fast_med:8.2f} ms")
    print(
        f"  SOCS, full-size iFFT per kernel  : best {full_best:8.2f} ms  median {full_med:8.2f} ms"
        f"  ({full_best / fast_best:5.1f}x slower)"
    )
    print(
        f"  direct Abbe summation            : best {abbe_best:8.2f} ms"
        f"  ({abbe_best / fast_best:5.0f}x slower)"
    )
    socs_image = sim.aerial(mask)
    abbe_image = abbe_aerial(mask, 4.0, optics)
    full_image = full_size_socs(mask, sim)
    print(
        f"  max |SOCS - Abbe| = {np.abs(socs_image - abbe_image).max():.5f} of clear field "
        f"({optics.n_kernels} kernels); max |band-limited - full-size SOCS| = "
        f"{np.abs(socs_image - full_image).max():.2e}"
    )

    print_best, print_med = best_ms(lambda: sim.printed(mask), args.repeats)
    print(
        f"  resist print (aerial + diffusion + threshold): best {print_best:.2f} ms",
        f" median {print_med:.2f} ms",
    )

    print(f"\n== farm throughput, families {', '.join(FAMILIES)}, 4 variants per layout ==")
    farm = FarmGenerator()
    print(f"  simulation window {farm.sim_px} px (clip 256 px + {farm.pad_px} px context each side)")
    for rate in (0.0, 0.2):
        per_cpu, per_wall, defects = farm_rate(rate, args.results, seed=1)
        print(
            f"  defect rate {rate:.1f}: {per_cpu:6.1f} results per CPU-second (per core), "
            f"{per_wall:6.1f} per wall second  ({defects} defects; target >= 20 per core)"
        )


if __name__ == "__main__":
    main()
