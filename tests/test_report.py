"""`make report`: pages with code folded and figures embedded; an index of claims and verdicts."""

import base64
import io
import json
import os

import matplotlib
import nbformat
import pytest

from kdutils import report
from kdutils.errors import ConfigError

matplotlib.use("Agg")


def png() -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def executed_notebook(folder, name, heading, output_dir):
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("plot_the_thing()  # SECRET_CODE_LINE", execution_count=1)
    code.outputs = [nbformat.v4.new_output("display_data", data={"image/png": png(), "text/plain": "<Figure>"})]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {heading}\nProse first."), code]
    nb.metadata["papermill"] = {"parameters": {"profile": "tiny", "output_dir": str(output_dir)}}
    nbformat.write(nb, folder / f"{name}.ipynb")


def test_report_pages_and_index(tmp_path):
    runs = tmp_path / "runs" / "tiny"
    runs.mkdir(parents=True)
    results = tmp_path / "figures" / "04_study"
    results.mkdir(parents=True)
    claims = [{"claim": "KD beats TL", "paper": "+3.56", "measured": "-0.10", "verdict": "not reproduced"},
              {"claim": "teacher <stronger>", "paper": "yes", "measured": "89%", "verdict": "reproduced"}]
    (results / "results.json").write_text(json.dumps({"profile": "tiny", "seeds": [0], "wall_time_s": 12.0,
                                                      "git_commit": "abc", "claims": claims}))
    # the runner runs a notebook into a private staging folder and renames it to results/ when it finishes
    executed_notebook(runs, "04_study", "Study 4: a study", results.with_name(".04_study.1234.staging"))
    executed_notebook(runs, "00_overview", "Overview", tmp_path / "nowhere")
    index = report.build(runs, tmp_path / "site")
    text = index.read_text()
    assert text.index("00_overview.html") < text.index("04_study.html")  # reading order: the overview first
    assert 'href="04_study.html">Study 4: a study</a>' in text
    assert '<td class="verdict no">not reproduced</td>' in text and '<td class="verdict ok">reproduced</td>' in text
    assert "teacher &lt;stronger&gt;" in text  # escaped
    assert "No results.json" in text  # the overview's results are missing: said, not hidden
    page = (tmp_path / "site" / "04_study.html").read_text()
    assert page.count('<details class="kd-code">') == 1 and "SECRET_CODE_LINE" in page
    assert page.index("Prose first.") < page.index("<details")
    assert page.count('src="data:image/png;base64,') == 1  # the figure, embedded
    assert "cdnjs" not in page and "unpkg" not in page  # opens offline


def test_report_defaults_to_the_newest_run_folder(tmp_path, monkeypatch):
    """Without --from, `make report` reads the `runs/<profile>/` whose executed notebooks were written last."""
    runs = tmp_path / "runs"
    monkeypatch.setenv("KD_RUNS_DIR", str(runs))  # the default root, read at each call
    for profile in ("tiny", "small"):
        for name in ("00_overview", "04_study"):
            (runs / profile).mkdir(parents=True, exist_ok=True)
            nbformat.write(nbformat.v4.new_notebook(), runs / profile / f"{name}.ipynb")
    (runs / "tiny" / "notes.txt").write_text("not an executed notebook: its time does not count")

    def written_at(path, seconds):
        os.utime(path, (seconds, seconds))

    for name in ("00_overview", "04_study"):
        written_at(runs / "tiny" / f"{name}.ipynb", 1_000)
        written_at(runs / "small" / f"{name}.ipynb", 2_000)
    written_at(runs / "tiny" / "notes.txt", 9_000)
    assert report.last_run_folder() == runs / "small"
    written_at(runs / "tiny" / "04_study.ipynb", 3_000)  # one notebook re-run at tiny makes it the last run
    assert report.last_run_folder() == runs / "tiny"


def test_report_without_runs_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="make run"):
        report.last_run_folder(tmp_path)


def test_the_command_line_and_the_report_start_without_torch():
    """`report`, `list` and `--help` start in under a second: neither the parser nor the report imports torch."""
    import subprocess
    import sys

    code = "import sys, kdutils.__main__ as m, kdutils.report; m._parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
