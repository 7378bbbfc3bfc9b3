"""The papermill engine of `python -m kdutils run`: section progress, and a Ctrl-C that always stops.

papermill executes cells from inside asyncio and zmq calls, where a
KeyboardInterrupt can land in library code that swallows it or leaves the
kernel running to the end of its cell. Here Ctrl-C only sets a flag and kills
the kernel; the cell's wait then fails, and the engine raises KeyboardInterrupt
once the kernel is cleaned up, so the runner's "interrupted" message is certain.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from papermill.log import logger

from .progress import SectionProgress, expected_seconds

ENGINE_NAME = "kd-sections"


class InterruptibleClient(PapermillNotebookClient):
    """papermill's client, with SIGINT turned into 'kill the kernel, then KeyboardInterrupt'."""

    interrupted = False

    def execute(self, **kwargs):
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started with Ctrl-C ignored (nohup, `&`)
            return super().execute(**kwargs)
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            return super().execute(**kwargs)
        except BaseException:
            if self.interrupted:
                raise KeyboardInterrupt from None
            raise
        finally:
            signal.signal(signal.SIGINT, previous)

    def _on_sigint(self, signum, frame):
        self.interrupted = True
        pid = getattr(getattr(self.km, "provisioner", None), "pid", None)
        if pid is None:  # no kernel yet: stop wherever we are
            raise KeyboardInterrupt
        os.kill(pid, signal.SIGKILL)


class SectionEngine(NBClientEngine):
    """Runs a notebook with `InterruptibleClient`; with a `progress_name`, reports through a `SectionProgress`."""

    @classmethod
    def execute_managed_notebook(cls, nb_man, kernel_name, progress_name: str | None = None,
                                 expected_s: float | None = None, progress_bars: bool = True, log_output=False,
                                 stdout_file=None, stderr_file=None, start_timeout=60, execution_timeout=None,
                                 **kwargs):
        kwargs.pop("input_path", None)
        client = InterruptibleClient(nb_man, kernel_name=kernel_name, timeout=execution_timeout,
                                     startup_timeout=start_timeout, log=logger, log_output=log_output,
                                     stdout_file=stdout_file, stderr_file=stderr_file, **kwargs)
        if progress_name is None:
            return client.execute()
        progress = SectionProgress(progress_name, nb_man.nb.cells, expected_s, bar=progress_bars)
        start, complete = nb_man.cell_start, nb_man.cell_complete

        def cell_start(cell, cell_index=None, **kw):
            progress.cell_start(cell_index)
            return start(cell, cell_index, **kw)

        def cell_complete(cell, cell_index=None, **kw):
            progress.cell_complete(cell_index)
            return complete(cell, cell_index=cell_index, **kw)

        nb_man.cell_start, nb_man.cell_complete = cell_start, cell_complete
        try:
            return client.execute()
        finally:
            progress.close()


papermill_engines.register(ENGINE_NAME, SectionEngine)


def engine_options(name: str | None, results_json: Path | None, profile: str, bars: bool = True) -> dict:
    """Keyword arguments for `papermill.execute_notebook`: this engine, with section progress when `name` is given
    (a line per section, and a cell bar when `bars`)."""
    expected = expected_seconds(results_json, profile) if name is not None else None
    return {"engine_name": ENGINE_NAME, "progress_bar": False, "progress_name": name, "expected_s": expected,
            "progress_bars": bars}
