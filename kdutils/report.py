"""`make report`: the executed notebooks of the last run as a static site a class can read.

nbconvert renders each executed notebook (the runner keeps them in
`runs/<profile>/`) to one HTML page, figures embedded, every code cell folded
into a <details> toggle so that prose, tables and figures read first.
`index.html` lists the studies in reading order, each claim with its verdict
(from the notebook's `results.json`), linking into the pages. Nothing is
loaded from the internet: the pages open offline.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path

import nbformat

from .errors import ConfigError
from .paths import REPO_ROOT, read_json, runs_dir

# The lab template with code folded away and its CDN scripts (RequireJS, MathJax, Mermaid, widgets) left out.
PAGE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block extra_css -%}
<style>
details.kd-code > summary { cursor: pointer; color: #666; font-size: 0.85em; margin: 2px 0 2px 8px; }
</style>
{%- endblock extra_css -%}
{% block input_group -%}
<details class="kd-code"><summary>code</summary>
{{ super() }}
</details>
{%- endblock input_group %}
"""

VERDICT_CLASS = {"reproduced": "ok", "not reproduced": "no"}

INDEX_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; width: 100%; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 6px; text-align: left; vertical-align: top; }
.verdict { white-space: nowrap; font-weight: 600; }
.ok { color: #1a7f37; } .no { color: #c62828; } .other { color: #777; }
"""


def last_run_folder(root: Path | None = None) -> Path:
    """The `runs/<profile>/` folder (or under `root`) whose executed notebooks are the newest."""
    root = Path(root) if root else runs_dir()
    folders = [p.parent for p in root.glob("*/[0-9][0-9]_*.ipynb")]
    if not folders:
        raise ConfigError(f"no executed notebooks under {root}: run `make run` "
                          f"(or `python -m kdutils run --profile tiny`) first.")
    return max(folders, key=lambda f: max(p.stat().st_mtime for p in f.glob("[0-9][0-9]_*.ipynb")))


def title(nb) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def results_of(nb, executed: Path) -> dict | None:
    """The results.json the executed notebook wrote: in its `output_dir` parameter, or beside it under the
    notebook's name (the runner passes a private staging folder and renames it when the run finishes),
    else in `<folder>/<name>/`."""
    output_dir = nb.metadata.get("papermill", {}).get("parameters", {}).get("output_dir")
    candidates = []
    if output_dir:
        output_dir = Path(output_dir) if Path(output_dir).is_absolute() else REPO_ROOT / output_dir
        candidates += [output_dir, output_dir.parent / executed.stem]
    candidates.append(executed.parent / executed.stem)
    return next(filter(None, (read_json(folder / "results.json") for folder in candidates)), None)


def render_page(nb, destination: Path) -> None:
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", extra_loaders=[DictLoader({"kd_page.html.j2": PAGE_TEMPLATE})],
                            template_file="kd_page.html.j2", embed_images=True)
    body, _ = exporter.from_notebook_node(nb)
    destination.write_text(body, encoding="utf-8")


def claims_table(claims: list[dict]) -> str:
    rows = []
    for c in claims:
        verdict = str(c.get("verdict", ""))
        cells = [html.escape(str(c.get(k, ""))) for k in ("claim", "paper", "measured")]
        rows.append(f"<tr><td>{cells[0]}</td><td>{cells[1]}</td><td>{cells[2]}</td>"
                    f'<td class="verdict {VERDICT_CLASS.get(verdict, "other")}">{html.escape(verdict)}</td></tr>')
    return ("<table><tr><th>claim</th><th>paper</th><th>this run</th><th>verdict</th></tr>"
            + "".join(rows) + "</table>")


def study_section(page: str, name: str, heading: str, results: dict | None) -> str:
    link = f'<h2><a href="{html.escape(page)}">{html.escape(heading or name)}</a></h2>'
    if results is None:
        return link + "<p>No results.json: this notebook did not finish.</p>"
    claims = results.get("claims") or []
    about = (f"<p>{html.escape(name)} at <code>{html.escape(str(results.get('profile')))}</code>, "
             f"seeds {html.escape(str(results.get('seeds')))}, {results.get('wall_time_s', 0):.0f} s, "
             f"commit <code>{html.escape(str(results.get('git_commit', ''))[:10])}</code></p>")
    if name.startswith("00"):
        counts = Counter(c.get("verdict") for c in claims)
        summary = ", ".join(f"{n} {html.escape(str(v))}" for v, n in sorted(counts.items(), key=str))
        return link + about + f"<p>Every study's claims beside this run's numbers ({summary}): read it first.</p>"
    return link + about + (claims_table(claims) if claims else "<p>No claims recorded.</p>")


def build(folder: Path | None = None, out: Path | None = None) -> Path:
    """Render every executed notebook of `folder` (default: the last run) into `out`; return index.html."""
    folder = Path(folder) if folder else last_run_folder()
    notebooks = sorted(Path(folder).glob("[0-9][0-9]_*.ipynb"))  # the overview first, then the studies by number
    if not notebooks:
        raise ConfigError(f"no executed notebooks (NN_name.ipynb) in {folder}.")
    out = Path(out) if out else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for executed in notebooks:
        nb = nbformat.read(executed, as_version=4)
        page = f"{executed.stem}.html"
        render_page(nb, out / page)
        sections.append(study_section(page, executed.stem, title(nb), results_of(nb, executed)))
        print(f"report: {out / page}")
    index = out / "index.html"
    index.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>kd-studies report</title>"
        f"<style>{INDEX_CSS}</style></head><body><h1>kd-studies: the executed notebooks</h1>"
        f"<p>Executed notebooks from <code>{html.escape(str(folder))}</code>. Each page opens with its prose, "
        "tables and figures; click <em>code</em> to see a cell's source.</p>"
        + "".join(sections) + "</body></html>", encoding="utf-8")
    print(f"report: {index}")
    return index
