"""`python -m kdutils run` shows the section being executed and elapsed / expected time."""

import json

import nbformat

from kdutils import progress, runner


def fake_notebook(path):
    params = nbformat.v4.new_code_cell('profile = "tiny"\noutput_dir = None')
    params.metadata["tags"] = ["parameters"]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A fake study"), params,
                nbformat.v4.new_markdown_cell("## 1. Data\nsome prose"), nbformat.v4.new_code_cell("x = 1"),
                nbformat.v4.new_code_cell("y = 2"), nbformat.v4.new_markdown_cell("no heading here"),
                nbformat.v4.new_markdown_cell("## 2. Training\n### 2.1 Heads"), nbformat.v4.new_code_cell("z = 3")]
    nb.metadata["kernelspec"] = {"name": "kd-studies", "display_name": "kd", "language": "python"}
    nbformat.write(nb, path)
    return nb


def test_section_titles_follow_the_last_heading(tmp_path):
    nb = fake_notebook(tmp_path / "97_fake.ipynb")
    assert progress.section_titles(nb.cells) == ["A fake study", "A fake study", "1. Data", "1. Data", "1. Data",
                                                 "1. Data", "2.1 Heads", "2.1 Heads"]


def test_expected_time_comes_from_the_last_run_at_the_same_profile(tmp_path):
    path = tmp_path / "results.json"
    assert progress.expected_seconds(path, "tiny") is None
    path.write_text(json.dumps({"profile": "tiny", "wall_time_s": 125.3}))
    assert progress.expected_seconds(path, "tiny") == 125.3
    assert progress.expected_seconds(path, "small") is None
    assert progress.clock(125.3) == "2:05"


def test_lines_show_section_elapsed_and_expected(tmp_path, monkeypatch):
    nb = fake_notebook(tmp_path / "97_fake.ipynb")
    ticks = iter([0.0, 3.0, 64.0, 65.0, 66.0, 67.0, 130.0])
    lines = []
    shown = progress.SectionProgress("97_fake", nb.cells, 120.0, timer=lambda: next(ticks), bar=False)
    monkeypatch.setattr(progress.tqdm, "write", lines.append)
    for index in range(len(nb.cells)):
        shown.cell_start(index)
    assert lines == ["[97_fake] A fake study  (0:03 / ~2:00 expected)", "[97_fake] 1. Data  (1:04 / ~2:00 expected)",
                     "[97_fake] 2.1 Heads  (1:05 / ~2:00 expected)"]


def test_runner_prints_sections_while_it_runs(tmp_path, monkeypatch, capsys):
    path = tmp_path / "97_fake.ipynb"
    fake_notebook(path)
    monkeypatch.setenv("KD_RUNS_DIR", str(tmp_path / "runs"))
    out = tmp_path / "out"
    (out / "97_fake").mkdir(parents=True)
    (out / "97_fake" / "results.json").write_text(json.dumps({"profile": "tiny", "wall_time_s": 61}))
    executed = runner.run([str(path)], "tiny", {}, output_root=out, progress=True)
    printed = capsys.readouterr().out
    sections = [line for line in printed.splitlines() if line.startswith("[97_fake]")]
    assert [line.split("  (")[0] for line in sections] == ["[97_fake] A fake study", "[97_fake] 1. Data",
                                                          "[97_fake] 2.1 Heads"]
    assert all(line.endswith("/ ~1:01 expected)") for line in sections)
    assert nbformat.read(executed[0], as_version=4).cells[-1].outputs == []  # executed, nothing printed
