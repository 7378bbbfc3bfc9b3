"""`python -m kdutils bench synthworld`: SynthWorld images/s at 32x32 on one core."""

from __future__ import annotations

import time

from kdutils.synthworld import TASKS, WorldConfig, generate


def run(n: int = 20000, config: WorldConfig = WorldConfig()) -> dict[str, float]:
    """Print and return images/s of ``generate`` for both tasks.

    The renderer is element-wise NumPy, which runs on one thread whatever the
    thread settings (only the small grassy-background matmul could use BLAS
    threads; set OPENBLAS_NUM_THREADS=1 to rule it out), so this is a
    one-core figure. Images per CPU-second are printed beside the wall-clock
    rate because on a shared machine the wall clock also counts other
    people's work. Captions are built lazily and timed separately.
    """
    generate("target", 64, 0, config)  # warm-up: imports, grid cache
    rates = {}
    for task in TASKS:
        wall, cpu = time.perf_counter(), time.process_time()
        batch = generate(task, n, 0, config)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        text = time.perf_counter()
        batch.captions, batch.hard_negatives
        text = time.perf_counter() - text
        rates[task], rates[f"{task}_cpu"], rates[f"{task}_text"] = n / wall, n / cpu, n / text
        print(f"synthworld {task}: {n / wall:7.0f} images/s wall, {n / cpu:7.0f} per CPU-second; "
              f"captions + hard negatives {n / text:7.0f} images/s ({n} images, "
              f"{config.size}x{config.size}, one thread)")
    return rates
