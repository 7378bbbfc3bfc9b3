"""The notebooks as people meet them: JupyterLab driven in Chromium, then the report, in a real browser.

JupyterLab runs on 127.0.0.1 with a token; Playwright drives Debian's
/usr/bin/chromium (no browser download: `.ci/run` installs the package). Each
notebook, prepared at `tiny` by papermill's prepare-only mode, is opened, run with
Run > Run All Cells and saved; the test checks that no cell failed, that every
figure is an image the browser decoded, that the progress bars are ipywidgets,
and keeps a screenshot. Then one parameter is edited and re-run, study 4's live
panel is moved, and the report built from the saved notebooks is opened.
Select it with `-m browser`; it is skipped only when Chromium is missing outside
CI (in CI a missing browser fails).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import papermill
import pytest

from kdutils import report, runner
from kdutils.paths import KERNEL_NAME

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOKS = [p.stem for p in runner.notebooks()]  # the studies first: the overview reads their results
RUN_TIMEOUT_S = 480  # one notebook; study 1 took 150 s here with a cold cache on 2 busy cores
# JupyterLab settings for an unattended browser: no news pop-up, every cell in the page (no windowing), the
# notebook's own kernel started without a "Select Kernel" dialog (which otherwise appears when the page opens
# the notebook before the kernel list has loaded), no autosave (the saved notebooks are the executed ones the
# report is built from).
LAB_SETTINGS = {"@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
                "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "autoStartDefaultKernel": True},
                "@jupyterlab/docmanager-extension/plugin": {"autosave": False}}


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run installs it with `apt-get install -y chromium`.")
    pytest.skip(f"{CHROMIUM} is missing: `apt-get install chromium` to run the browser tests (CI installs it).")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on the prepared notebooks: (base URL, token, work folder)."""
    require_chromium()
    work = tmp_path_factory.mktemp("browser")
    served = work / "notebooks"
    served.mkdir()
    for name in NOTEBOOKS:
        papermill.execute_notebook(str(runner.resolve(name)), str(served / f"{name}.ipynb"), prepare_only=True,
                                   kernel_name=KERNEL_NAME,
                                   parameters={"profile": "tiny", "output_dir": str(work / "out" / name),
                                               "overrides": {"progress": True}})
    for name, values in LAB_SETTINGS.items():
        path = work / "settings" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(work / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(work / "workspaces"), "JUPYTER_RUNTIME_DIR": str(work / "runtime"),
           "KD_CACHE_DIR": str(work / "cache")}  # its own, always cold: every study must draw its bars
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={served}"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    base = f"http://127.0.0.1:{port}"
    with open(work / "jupyterlab.log", "w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                    break
                except OSError:
                    if server.poll() is not None or time.time() > deadline:
                        raise RuntimeError(f"JupyterLab did not start; see {work / 'jupyterlab.log'}") from None
                    time.sleep(0.5)
            yield base, token, work
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


@pytest.fixture(scope="module")
def browser(lab):
    """Chromium with a new, empty profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(lab[2] / "chromium-profile"), executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 1000})
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def tabs(browser, lab):
    """One browser tab per notebook, each in its own JupyterLab workspace; opened on first use and kept open,
    so the later tests find the kernels and widgets of the runs."""
    opened = {}

    def tab(name):
        if name not in opened:
            base, token, _ = lab
            page = browser.new_page()
            page.goto(f"{base}/lab/workspaces/{name}/tree/{name}.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
            page.locator(".jp-Toolbar-kernelName", has_text="kd-studies (.venv)").wait_for(timeout=30_000)
            opened[name] = page
        return opened[name]

    return tab


def prompts(page) -> list[str]:
    return page.eval_on_selector_all(".jp-CodeCell .jp-InputPrompt", "els => els.map(e => e.textContent.trim())")


def evidence(page, work: Path, what: str) -> str:
    """A screenshot and the end of JupyterLab's log, for a failure message."""
    shot = work / f"failure-{what}.png"
    page.screenshot(path=str(shot))
    log = (work / "jupyterlab.log").read_text()[-2000:]
    dialogs = page.eval_on_selector_all(".jp-Dialog", "els => els.map(e => e.textContent)")
    return f"dialogs {dialogs}; screenshot {shot}; end of JupyterLab's log:\n{log}"


# Counts every progress-bar widget the page draws, however briefly (most close when their loop ends).
COUNT_PROGRESS_BARS = """() => {
    window.kdProgressBars = 0;
    new MutationObserver(changes => { for (const change of changes) for (const node of change.addedNodes)
        if (node.nodeType === 1) window.kdProgressBars += (node.matches('.widget-hprogress') ? 1 : 0)
                                                       + node.querySelectorAll('.widget-hprogress').length;
    }).observe(document.body, {childList: true, subtree: true});
}"""


def run_all(page, work: Path, name: str) -> None:
    """Run > Run All Cells, clicked again if no cell has started 20 s later (a click while the kernel connects)."""
    page.evaluate(COUNT_PROGRESS_BARS)
    for _ in range(3):
        assert page.locator(".jp-Dialog").count() == 0, evidence(page, work, name)
        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
        deadline = time.time() + 20
        while time.time() < deadline:
            if any(p != "[ ]:" for p in prompts(page)):
                return
            time.sleep(0.5)
    raise AssertionError(f"Run All did not start {name}; " + evidence(page, work, name))


def wait_until_run(page, timeout_s: float) -> None:
    """Wait until every code cell has run (or one failed and the rest were skipped) and the kernel is idle."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        shown = prompts(page)
        idle = page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count() == 1
        failed = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").filter(
            has_text="Traceback").count()
        if idle and "*" not in "".join(shown) and (all(p[1:-2].isdigit() for p in shown) or failed):
            return
        time.sleep(0.5)
    raise AssertionError(f"cells still running after {timeout_s} s: {prompts(page)}")


def save(page, path: Path) -> nbformat.NotebookNode:
    """Ctrl+S, then wait until the file on disk holds the executed notebook."""
    page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Control+s")
    deadline = time.time() + 30
    while time.time() < deadline:
        nb = nbformat.read(path, as_version=4)
        if all(c.execution_count for c in nb.cells if c.cell_type == "code"):
            return nb
        time.sleep(0.5)
    raise AssertionError(f"{path} was not saved with its outputs")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_jupyterlab(tabs, lab, name):
    work = lab[2]
    t0 = time.perf_counter()
    page = tabs(name)
    run_all(page, work, name)
    wait_until_run(page, RUN_TIMEOUT_S)
    nb = save(page, work / "notebooks" / f"{name}.ipynb")
    seconds = time.perf_counter() - t0

    errors = [f"{o.ename}: {o.evalue}" for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    images = page.eval_on_selector_all(".jp-OutputArea-output img",
                                       "els => els.map(e => e.complete && e.naturalWidth > 0)")
    assert figures > 0 and len(images) == figures and all(images), (figures, images)
    unrendered = page.locator(".jp-OutputArea-output .jp-RenderedText").filter(has_text="<Figure size")
    assert unrendered.count() == 0, "a figure was printed as text instead of drawn"
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    widgets = sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs)
    assert not [o.text for o in outputs if o.output_type == "stream" and "%|" in o.text], "a progress bar as text"
    bars = page.evaluate("() => window.kdProgressBars")
    assert (bars > 0) == (widgets > 0), f"{widgets} widget outputs, {bars} progress bars drawn as widgets"
    if name != "00_overview":  # each study trains or extracts features (the lab's cache is its own and cold)
        assert bars > 0, f"{name} drew no progress bar as a widget (prepared with progress=True)"
    assert page.locator(".jp-OutputArea-output").filter(has_text="Error displaying widget").count() == 0
    assert page.locator(".jp-RenderedText").filter(has_text="FloatProgress(").count() == 0  # a widget as text
    page.locator(".jp-OutputArea-output img").first.scroll_into_view_if_needed()
    page.screenshot(path=str(work / f"{name}.png"))
    print(f"{name}: run in JupyterLab in {seconds:.1f} s, {figures} figures, {bars} progress bars drawn; "
          f"screenshot {work / f'{name}.png'}")


def test_parameter_change_shows_in_the_output(tabs):
    """Edit the parameters cell of the overview (seeds), re-run it and what follows, see the new seeds printed."""
    page = tabs("00_overview")
    cell = page.locator(".jp-CodeCell", has_text="seeds = None").first
    cell.locator(".cm-content").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text('profile = "small"\nseeds = [5, 6]\ndry_run = False\noutput_dir = None\noverrides = {}')
    for _ in range(3):  # the parameters cell, papermill's injected one, the set-up cell that prints the seeds
        page.keyboard.press("Shift+Enter")
    page.locator(".jp-OutputArea-output").filter(has_text="seeds=[5, 6]").first.wait_for(timeout=60_000)


def test_live_panel_follows_the_alpha_slider(tabs, lab):
    work = lab[2]
    page = tabs("04_tl_kd_shap")  # run by test_notebook_runs_in_jupyterlab[04_tl_kd_shap]
    label = page.locator(".kd-live-panel .kd-live-label")
    before = label.inner_text()
    assert "alpha = 0.10" in before
    readout = page.locator(".kd-live-panel .widget-slider").nth(1).locator(".widget-readout")
    readout.click()
    page.keyboard.press("Control+a")
    page.keyboard.type("0.9")
    t0 = time.perf_counter()
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.querySelector('.kd-live-label').textContent.includes('alpha = 0.90')",
                           timeout=3_000)
    print(f"live panel: the label followed the slider in {time.perf_counter() - t0:.2f} s: {label.inner_text()}")
    assert label.inner_text() != before
    page.locator(".kd-live-panel").scroll_into_view_if_needed()
    page.screenshot(path=str(work / "live_panel.png"))


def test_report_opens_in_the_browser(browser, lab):
    work = lab[2]
    page = browser.new_page()
    index = report.build(work / "notebooks", work / "report")
    page.goto(index.as_uri())
    links = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    assert set(links) == {f"{name}.html" for name in NOTEBOOKS}
    assert page.locator("td.verdict").count() > 0
    for link in links:
        page.goto((work / "report" / link).as_uri())
        images = page.eval_on_selector_all("img", "els => els.map(e => e.complete && e.naturalWidth > 0)")
        assert images and all(images), (link, images)
        assert page.locator("details.kd-code[open]").count() == 0  # code folded: prose and figures first
        assert page.locator("details.kd-code").count() > 0
    page.screenshot(path=str(work / "report.png"))
