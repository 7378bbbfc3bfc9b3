"""Progress a person can follow while `python -m kdutils run` executes a notebook.

papermill's own bar counts cells, but a study spends minutes in a single cell, so
a count says little. This papermill engine prints each section as it starts (the
notebook's markdown heading) with the time since the notebook started beside the
time its last run took (`wall_time_s` of the `results.json` it wrote), and keeps
a cell bar whose postfix shows the same two times.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from papermill.engines import NBClientEngine, papermill_engines
from tqdm.auto import tqdm

ENGINE_NAME = "kd-sections"


def section_titles(cells) -> list[str]:
    """For each cell, the last markdown heading at or above it ('' before the first heading)."""
    titles, current = [], ""
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            headings = [line.lstrip("#").strip() for line in "".join(cell.get("source", "")).splitlines()
                        if line.startswith("#")]
            current = headings[-1] if headings else current
        titles.append(current)
    return titles


def expected_seconds(results_json: Path, profile: str) -> float | None:
    """The wall time of the last run at `profile` that wrote `results_json`; None if there is none."""
    try:
        results = json.loads(Path(results_json).read_text())
    except (OSError, ValueError):
        return None
    wall = results.get("wall_time_s")
    return float(wall) if results.get("profile") == profile and isinstance(wall, (int, float)) else None


def clock(seconds: float) -> str:
    """125.3 -> '2:05'."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


class SectionProgress:
    """Prints a line when execution enters a new section; a cell bar shows elapsed / expected time."""

    def __init__(self, name: str, cells, expected_s: float | None, *, timer=time.perf_counter, bar: bool = True):
        self.name, self.expected_s, self.timer = name, expected_s, timer
        self.titles = section_titles(cells)
        self.is_code = [cell.get("cell_type") == "code" for cell in cells]
        self.current = None
        self.started = timer()
        self.bar = tqdm(total=sum(self.is_code), unit="cell", desc=name, leave=False, disable=not bar)

    def times(self) -> str:
        elapsed = clock(self.timer() - self.started)
        return f"{elapsed} / ~{clock(self.expected_s)} expected" if self.expected_s else f"{elapsed} (no earlier run)"

    def cell_start(self, index: int) -> None:
        title = self.titles[index]
        if title and title != self.current:
            self.current = title
            tqdm.write(f"[{self.name}] {title}  ({self.times()})")

    def cell_complete(self, index: int) -> None:
        if self.is_code[index]:
            self.bar.set_postfix_str(self.times(), refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class SectionEngine(NBClientEngine):
    """papermill's nbclient engine, reporting through a `SectionProgress`."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, progress_name: str = "notebook",
                                 expected_s: float | None = None, **kwargs):
        progress = SectionProgress(progress_name, nb_man.nb.cells, expected_s)
        start, complete = nb_man.cell_start, nb_man.cell_complete

        def cell_start(cell, cell_index=None, **kw):
            progress.cell_start(cell_index)
            return start(cell, cell_index, **kw)

        def cell_complete(cell, cell_index=None, **kw):
            progress.cell_complete(cell_index)
            return complete(cell, cell_index=cell_index, **kw)

        nb_man.cell_start, nb_man.cell_complete = cell_start, cell_complete
        try:
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
        finally:
            progress.close()


papermill_engines.register(ENGINE_NAME, SectionEngine)


def engine_options(name: str, results_json: Path, profile: str) -> dict:
    """Keyword arguments for `papermill.execute_notebook` that switch this progress on."""
    return {"engine_name": ENGINE_NAME, "progress_bar": False, "progress_name": name,
            "expected_s": expected_seconds(results_json, profile)}
