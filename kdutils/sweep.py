"""Sweeps of a study notebook over seeds and grid cells, scheduled by Ray.

`python -m kdutils sweep 04 --profile small --seeds 0,7,42 --grid s4_lr=0.01,0.1` runs one papermill job
per (grid cell, seed), each with `seeds=[seed]` and its own output folder, as Ray tasks holding
`--cpus-per-job` CPUs and `--gpus-per-job` GPUs (Ray gives a GPU job its own device through
CUDA_VISIBLE_DEVICES). Every job is validated before any starts. A job whose `results.json` exists is
skipped, so a sweep that crashed or lost a job is resumed by running the same command again.

Then, per grid cell, a merge runs the notebook once with every seed. Jobs and merges share one results
store (`KD_RESULTS_STORE`, `<output-root>/store`) where a notebook keeps each finished seed (study 4:
`tlkd.h1_seed`, `tlkd.tl_vs_kd`), so the merge reuses the jobs' seeds instead of training them again, and
its tables, verdicts and figures come from the notebook's own code: a sweep and the notebook run with the
same `seeds` give the same numbers. A notebook without a store recomputes its seeds in the merge.

On a cluster (`--address auto` after `ray start --head` / `ray start --address HEAD:6379`), the output
root must be a folder every node sees (a shared file system).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .paths import KERNEL_NAME, runs_dir
from .runner import _check_kernel, notebook_parameters, resolve, validate

STATES = ("queued", "running", "done", "failed", "skipped")


@dataclass
class Job:
    """One papermill execution: a (grid cell, seed) job, or the merge of a cell's seeds."""

    name: str
    notebook: Path
    folder: Path
    params: dict
    state: str = "queued"
    progress: str = ""
    error: str = ""
    seconds: float = 0.0
    started: float = field(default=0.0, repr=False)

    @property
    def executed(self) -> Path:
        """Beside the output folder, which runner.execute replaces as a whole when the notebook finishes."""
        return self.folder.parent / f"{self.folder.name}.ipynb"

    @property
    def record(self) -> Path:
        return self.folder.parent / f"{self.folder.name}.json"

    @property
    def finished(self) -> bool:
        return (self.folder / "results.json").exists()

    def check_folder(self) -> None:
        """A folder holding another job's results (other parameters) is an error, not a job to skip."""
        if self.record.exists() and json.loads(self.record.read_text()) != json.loads(json.dumps(self.params)):
            raise ConfigError(f"{self.folder} holds a job run with other parameters ({self.record}); use another "
                              "--output-root, or delete the folder to run it again.")


def parse_grid(pairs: list[str]) -> dict[str, list]:
    """['s4_lr=0.01,0.1'] -> {'s4_lr': [0.01, 0.1]} (each value a Python literal)."""
    from .runner import parse_value

    grid = {}
    for pair in pairs:
        name, sep, values = pair.partition("=")
        if not sep or not values:
            raise ConfigError(f"--grid '{pair}' must be written name=value1,value2,...")
        grid[name.strip()] = [parse_value(v.strip()) for v in values.split(",")]
    return grid


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers such as 0,7,42; got '{text}'.") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds needs distinct seeds, got '{text}'.")
    return seeds


def plan(notebook: str, profile: str, seeds: list[int], params: dict, grid: dict[str, list],
         output_root: Path) -> tuple[list[Job], list[Job]]:
    """Every job and every merge, validated (`runner.validate`) before anything runs."""
    path = resolve(notebook)
    declared = notebook_parameters(path)
    missing = {"seeds", "output_dir"} - set(declared)
    if missing:
        raise ConfigError(f"{path.stem} cannot be swept: its parameters cell lacks {sorted(missing)}.")
    if "seeds" in params or "output_dir" in params:
        raise ConfigError("give seeds with --seeds and the folder with --output-root, not with -p.")
    jobs, merges = [], []
    for values in itertools.product(*grid.values()):
        cell = dict(zip(grid, values))
        cell_name = ",".join(f"{k}={v}" for k, v in cell.items())
        cell_folder = Path(output_root) / path.stem / cell_name  # no grid: "" adds nothing
        jobs_folder = Path(output_root) / "jobs" / path.stem / cell_name
        base = {**params, **cell}
        for seed in seeds:
            folder = jobs_folder / f"seed{seed}"
            full = validate(path, profile, {**base, "seeds": [seed], "output_dir": str(folder)})
            jobs.append(Job(f"{cell_name} seed {seed}".strip(), path, folder, full))
        full = validate(path, profile, {**base, "seeds": list(seeds), "output_dir": str(cell_folder)})
        merges.append(Job(f"{cell_name} merge of seeds {seeds}".strip(), path, cell_folder, full))
    return jobs, merges


def _execute(notebook: str, params: dict, profile: str, executed: str, kernel: str, env: dict) -> str:
    """The Ray task: `runner.execute` one notebook; return '' or the failure (never raises)."""
    from .runner import NotebookFailed, execute

    os.environ.update(env)  # the kernel inherits it: thread limits, the shared results store
    try:
        execute(Path(notebook), params, profile, Path(executed), kernel)
    except NotebookFailed as err:  # a cell raised, ran past its limit, or the kernel died (killed)
        return str(err)
    except Exception as err:  # anything else (a lost worker...): the job failed, the sweep goes on
        return f"{type(err).__name__}: {err}\nExecuted notebook: {executed}"
    return ""


def _cells_done(executed: Path) -> str:
    """'12/37 cells' from papermill's per-cell status in the notebook it keeps saving (a private copy
    beside `executed` while it runs, see runner._as_one_unit)."""
    running = sorted(executed.parent.glob(f".{executed.stem}.*.running.ipynb"))
    try:
        cells = json.loads((running[-1] if running else executed).read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return ""
    status = [c.get("metadata", {}).get("papermill", {}).get("status") for c in cells if c["cell_type"] == "code"]
    return f"{status.count('completed')}/{len(status)} cells"


class Table:
    """The live job table: redrawn in place on a terminal, printed on each state change otherwise."""

    def __init__(self, jobs: list[Job], stream=sys.stdout):
        self.jobs, self.stream, self.lines = jobs, stream, 0
        self.tty, self.last = stream.isatty(), None

    def render(self) -> list[str]:
        width = max(len(j.name) for j in self.jobs)
        counts = ", ".join(f"{sum(j.state == s for j in self.jobs)} {s}" for s in STATES)
        rows = [f"  {j.name:<{width}}  {j.state:<8} {j.progress:<14} "
                f"{f'{j.seconds:.0f} s' if j.seconds else ''}" for j in self.jobs]
        return [f"sweep: {counts}", *rows]

    def draw(self) -> None:
        lines = self.render()
        if self.tty:
            self.stream.write(f"\x1b[{self.lines}F" if self.lines else "")
            self.stream.write("".join(f"\x1b[2K{line}\n" for line in lines))
            self.lines = len(lines)
        elif [j.state for j in self.jobs] != self.last:
            self.stream.write("\n".join(lines) + "\n")
        self.last = [j.state for j in self.jobs]
        self.stream.flush()


def _run_jobs(ray, task, jobs: list[Job], table: Table, profile: str, kernel: str, env: dict,
              poll_s: float) -> None:
    """Submit the unfinished jobs, follow them until each is done or failed."""
    pending = {}
    for job in jobs:
        if job.finished:
            job.state, job.progress = "skipped", "results exist"
            continue
        job.record.parent.mkdir(parents=True, exist_ok=True)
        job.record.write_text(json.dumps(job.params, indent=1))
        job.executed.unlink(missing_ok=True)  # a crashed attempt's notebook would read as progress
        job.started = time.time()
        ref = task.remote(str(job.notebook), job.params, profile, str(job.executed), kernel,
                          {**env, "KD_SWEEP_JOB": job.name})
        pending[ref] = job
    table.draw()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=poll_s)
        for ref in ready:
            job = pending.pop(ref)
            job.error = ray.get(ref)
            job.state = "failed" if job.error or not job.finished else "done"
            if job.state == "failed" and not job.error:
                job.error = f"the notebook wrote no results.json; executed notebook: {job.executed}"
            job.progress = _cells_done(job.executed) or job.progress
            job.seconds = time.time() - job.started
        for job in pending.values():
            progress = _cells_done(job.executed)
            if progress:
                job.state, job.progress, job.seconds = "running", progress, time.time() - job.started
        table.draw()


def sweep(notebook: str, profile: str, seeds: list[int], params: dict | None = None,
          grid: dict[str, list] | None = None, *, address: str = "local", cpus_per_job: float = 1.0,
          gpus_per_job: float = 0.0, num_cpus: int | None = None, output_root: Path | None = None,
          kernel: str = KERNEL_NAME, poll_s: float = 1.0, stream=sys.stdout) -> dict:
    """Run the jobs on Ray, then merge each grid cell; return {'jobs', 'merges', 'failed', 'jobs_seconds'}.

    `address`: "local" starts a private Ray on this machine with `num_cpus`
    (default: all cores) and no dashboard; "auto" or "HOST:PORT" joins a
    running cluster. Raises nothing for a failed job: failures are listed
    (with their executed notebooks) and no merge runs until they succeed.
    `jobs_seconds` is the wall time of the jobs alone (what more workers
    shorten), without Ray's start and the merges.
    """
    import ray

    output_root = Path(output_root or runs_dir() / profile / "sweeps").resolve()
    jobs, merges = plan(notebook, profile, seeds, params or {}, grid or {}, output_root)
    for job in jobs + merges:
        job.check_folder()
    _check_kernel(kernel)
    if cpus_per_job <= 0 or gpus_per_job < 0:
        raise ConfigError(f"--cpus-per-job must be > 0 and --gpus-per-job >= 0; got {cpus_per_job}, {gpus_per_job}.")
    threads = str(max(1, int(cpus_per_job)))
    env = {**{k: v for k, v in os.environ.items() if k.startswith("KD_")},  # the driver's cache and runs folders
           "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "KD_RESULTS_STORE": str(output_root / "store")}
    if address == "local":
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 object_store_memory=80 * 2**20, configure_logging=False)
    else:
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as err:
            raise ConfigError(f"no Ray cluster at --address {address} ({err}). Start one with `ray start "
                              "--head` (and `ray start --address HEAD:6379` on the other nodes), or use --address "
                              "local.") from None
    try:
        have = ray.cluster_resources()
        if address == "local" and (cpus_per_job > have.get("CPU", 0) or gpus_per_job > have.get("GPU", 0)):
            raise ConfigError(f"a job asks for {cpus_per_job:g} CPUs and {gpus_per_job:g} GPUs, but this machine's "
                              f"Ray has {have.get('CPU', 0):g} and {have.get('GPU', 0):g}: no job could ever start.")
        task = ray.remote(num_cpus=cpus_per_job, num_gpus=gpus_per_job, max_retries=0)(_execute)
        t0 = time.perf_counter()
        table = Table(jobs, stream)
        _run_jobs(ray, task, jobs, table, profile, kernel, env, poll_s)
        jobs_seconds = time.perf_counter() - t0
        failed = [j for j in jobs if j.state == "failed"]
        if not failed:
            table = Table(jobs + merges, stream)
            for merge in merges:  # always merged again (cheap: the seeds come from the store)
                merge.folder.joinpath("results.json").unlink(missing_ok=True)
            _run_jobs(ray, task, merges, table, profile, kernel, env, poll_s)
            failed = [j for j in merges if j.state == "failed"]
    finally:
        ray.shutdown()
    for job in failed:
        stream.write(f"FAILED {job.name}:\n{job.error}\n")
    if not failed:
        stream.write("merged results: " + ", ".join(str(m.folder / "results.json") for m in merges) + "\n")
    return {"jobs": jobs, "merges": merges, "failed": failed, "jobs_seconds": jobs_seconds}

