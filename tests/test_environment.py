"""environment.yml (conda) and pyproject.toml (pip) must describe one environment."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_installs_the_project_from_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert env["channels"] == ["conda-forge"], "conda-forge only: the pytorch channel is deprecated"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e .[dev]" in pip, "the pip section must install the project itself"
    python = next(d for d in conda if d.startswith("python"))
    major_minor = tuple(int(x) for x in python.split("=")[1].split(".")[:2])
    floor = tuple(int(x) for x in re.search(r">=\s*([\d.]+)", project["requires-python"]).group(1).split("."))
    assert major_minor >= floor
    declared = {_name(d) for d in project["dependencies"] + project["optional-dependencies"]["dev"]}
    for dep in conda:
        name = _name(dep)
        assert name in {"python", "pip"} or name in declared, f"{dep} is in environment.yml but not pyproject.toml"
    extra_pip = [p for p in pip if not p.startswith("-e")]
    assert all(_name(p) in declared for p in extra_pip), extra_pip


def test_make_pins_torch_and_pyproject_keeps_ranges():
    pins = (ROOT / "constraints.txt").read_text()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in deps if _name(d) == "torch")
    assert "==" not in torch_req, "pyproject keeps a range so other CUDA set-ups can install"
    assert "constraints.txt" in (ROOT / "Makefile").read_text()
