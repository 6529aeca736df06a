"""The documentation site builds with warnings as errors (broken references, missing API objects, bad
reStructuredText or MyST), and every example of its gallery runs and ends in a figure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("plot_*.py"))
# runs an example as sphinx-gallery would, then saves its last figure (a PNG for a person to look at)
RUN_EXAMPLE = """
import runpy, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.show = lambda *args, **kwargs: None
runpy.run_path(sys.argv[1], run_name="__main__")
assert plt.get_fignums(), "the example drew no figure"
plt.figure(plt.get_fignums()[-1]).savefig(sys.argv[2])
"""


pytest.importorskip("sphinx_gallery", reason="the docs stack is in the dev extra")


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    env = {**os.environ, "NEUROSTORM_DOCS_RUN_EXAMPLES": "0"}  # the examples run in the test below
    result = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                             "-d", str(tmp_path / "doctrees"), str(ROOT / "docs"), str(tmp_path / "html")],
                            capture_output=True, text=True, env=env, cwd=ROOT / "docs")
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "html" / "api.html").exists() and (tmp_path / "html" / "auto_examples" / "index.html").exists()


@pytest.fixture(scope="module")
def examples_folder(tmp_path_factory) -> Path:
    """One folder for all examples, in order: the first makes the cohort, later ones reuse it and the
    pretrained model."""
    return tmp_path_factory.mktemp("gallery")


def test_there_are_six_examples_or_more():
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.stem)
def test_gallery_example_runs_and_draws(example, examples_folder):
    figure = examples_folder / f"{example.stem}.png"
    result = subprocess.run([sys.executable, "-c", RUN_EXAMPLE, str(example), str(figure)], cwd=examples_folder,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    assert figure.stat().st_size > 10_000
