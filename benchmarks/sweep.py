"""A sweep on Ray against the same jobs one after another: `python -m kdutils bench sweep`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from kdutils.sweep import sweep


def run(jobs: int = 4, workers: int = 2) -> dict:
    """A `jobs`-job sweep (notebook 04 at tiny, one job per seed) on `workers` one-CPU workers against the
    same jobs one after another (one worker); print the speed-up.

    Each job's torch threads are limited to its one CPU in both runs; each
    run has its own empty results store, and the frozen caches are filled
    first by an untimed job, so both runs do the same work. Merges are not timed.
    """
    seeds = list(range(jobs))
    previous = os.environ.get("KD_CACHE_DIR")
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as quiet:
        os.environ["KD_CACHE_DIR"] = str(Path(tmp) / "cache")
        try:
            sweep("04", "tiny", [1000], num_cpus=1, output_root=Path(tmp) / "warm-up", stream=quiet)
            runs = {n: sweep("04", "tiny", seeds, num_cpus=n, output_root=Path(tmp) / f"workers{n}", stream=quiet)
                    for n in (1, workers)}
            merged = {n: json.loads((Path(tmp) / f"workers{n}" / "04_tl_kd_shap" / "results.json").read_text())
                      for n in runs}
        finally:
            if previous is None:
                del os.environ["KD_CACHE_DIR"]
            else:
                os.environ["KD_CACHE_DIR"] = previous
    one, many = runs[1]["jobs_seconds"], runs[workers]["jobs_seconds"]
    numbers = {n: {k: v for k, v in m["metrics"].items() if k != "wall_time_s"} for n, m in merged.items()}
    same = numbers[workers] == numbers[1]
    print(f"sweep of {jobs} jobs (notebook 04 at tiny, seeds {seeds}), 1 CPU and 1 torch thread per job, "
          f"{os.cpu_count()} cores")
    print(f"  one after another (1 worker): {one:.1f} s")
    print(f"  {workers} workers: {many:.1f} s")
    print(f"  speed-up: {one / many:.2f}x (ideal {min(workers, jobs)}x); same merged numbers: {same}")
    return {"jobs": jobs, "workers": workers, "sequential_s": one, "parallel_s": many, "speedup": one / many,
            "same_merged_numbers": same}
