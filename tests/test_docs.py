"""The README is a front door and the documentation site builds: limits, links, paths, docstrings."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import densenets

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOC_FILES = [README, *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "docs").glob("*.py"))]
# what only our own development machines have: the shared folder beside the checkout, and their homes
MACHINE_PATHS = re.compile(r"\.\./shared|(?<![\w.])/(?:work|root|home/\w+)/")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_is_a_front_door_of_at_most_300_lines():
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines"


def test_quick_start_has_the_two_commands_and_ci_runs_the_second():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.S)
    assert len(commands) == 2, commands
    assert commands[0].endswith("densenets train"), commands[0]
    assert commands[1].endswith("python -m pytest"), commands[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert "pip install -q -e '.[dev]'" in ci and "python -m pytest" in ci


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_path_of_our_machines(path):
    lines = enumerate(path.read_text().splitlines(), 1)
    hits = [f"{i}: {line.strip()}" for i, line in lines if MACHINE_PATHS.search(line)]
    assert not hits, f"{path.relative_to(REPO)} names a path only our machines have:\n" + "\n".join(hits)


def test_no_path_of_our_machines_in_the_records():
    records = [p for p in (REPO / "docs").rglob("*") if p.suffix in (".json", ".jsonl", ".log", ".csv")]
    assert records, "the docs keep their records"
    hits = [str(p.relative_to(REPO)) for p in records if MACHINE_PATHS.search(p.read_text(errors="replace"))]
    assert not hits, f"records naming a path of our machines: {hits}"


def test_readme_links_point_at_files_that_exist():
    missing = [t for t in LINK.findall(README.read_text()) if "://" not in t and not (REPO / t).exists()]
    assert not missing, f"README links to missing files: {missing}"


PUBLIC_FUNCTIONS = [name for name in densenets.__all__ if inspect.isfunction(getattr(densenets, name))]


@pytest.mark.parametrize("name", PUBLIC_FUNCTIONS)
def test_public_functions_document_arguments_and_returns(name):
    function = getattr(densenets, name)
    doc = inspect.getdoc(function) or ""
    parameters = [p for p in inspect.signature(function).parameters.values() if p.name != "self"]
    if parameters:
        assert "Args:" in doc, f"densenets.{name} documents no arguments"
        for p in parameters:
            shown = f"**{p.name}" if p.kind is p.VAR_KEYWORD else p.name
            assert re.search(rf"^\s+{re.escape(shown)}:", doc, flags=re.M), f"densenets.{name}: {shown} undocumented"
    returns_something = inspect.signature(function).return_annotation not in (None, "None")
    assert ("Returns:" in doc) == returns_something, f"densenets.{name}: Returns section and return value disagree"


def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    assert densenets.__version__ == version("densenets")


def test_documentation_site_builds_strict(tmp_path):
    """``mkdocs build --strict``: a broken link, a missing page in the API reference or a
    docstring griffe cannot read fails the build."""
    if shutil.which("mkdocs") is None and not _module_exists("mkdocs"):
        if os.environ.get("CI"):
            pytest.fail("mkdocs is not installed in CI: the dev extra should bring it")
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    api = (site / "api" / "index.html").read_text()
    for name in ("create_model", "load", "explain", "optimize_for_inference", "DenseNetConfig", "cifar_config"):
        assert f'id="densenets.{name}"' in api, f"the API reference lacks densenets.{name}"
    cli = (site / "cli" / "index.html").read_text()
    assert "densenets train" in cli and "--data-dir" in cli, "the CLI reference was not generated"


def _module_exists(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
