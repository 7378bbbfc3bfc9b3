"""Progress a person can follow while `python -m kdutils run` executes a notebook.

papermill's own bar counts cells, but a study spends minutes in a single cell, so
a count says little. `kdutils.engine` prints each section as it starts (the
notebook's markdown heading) with the time since the notebook started beside the
time its last run took (`wall_time_s` of the `results.json` it wrote), and keeps
a cell bar whose postfix shows the same two times.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm.auto import tqdm

from .errors import CorruptFileError
from .paths import read_json

#: What `python -m kdutils run --progress` shows: a cell bar and a line per section, the lines only, nothing.
PROGRESS_MODES = ("bars", "sections", "none")


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
        results = read_json(results_json) or {}
    except CorruptFileError:  # no estimate from a file that is not a finished run's results
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
