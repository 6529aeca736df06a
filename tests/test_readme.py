"""Every `bash` and `python` block of the README and of the user guide's pages runs as written, in reading
order, in one folder (one epoch of training where a command trains), so neither can drift from the code."""

import glob
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from neurostorm.cli import main

ROOT = Path(__file__).resolve().parent.parent
TRAINS = ("pretrain", "finetune", "compare")  # one epoch here, whatever the README asks
NOT_RUN = {  # commands the tests cannot run here, and where they are covered
    "make demo": "tests/test_demo.py runs the quick demo",
    "make test": "this suite",
}


def pages() -> list[Path]:
    """The README, then the user guide's pages in the order of its table of contents."""
    index = (ROOT / "docs" / "user_guide" / "index.md").read_text()
    toc = re.search(r"```{toctree}\n(.*?)```", index, flags=re.S).group(1)
    names = [line.strip() for line in toc.splitlines() if line.strip() and not line.startswith(":")]
    return [ROOT / "README.md", *(ROOT / "docs" / "user_guide" / f"{name}.md" for name in names)]


def readme_blocks(language: str) -> list[str]:
    return [block for page in pages() for block in re.findall(rf"```{language}\n(.*?)```", page.read_text(),
                                                              flags=re.S)]


def readme_commands() -> list[str]:
    """Every command line of the pages' bash blocks (continuations joined, comments dropped)."""
    commands = []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            command = " ".join(shlex.split(line, comments=True))
            if command and command not in NOT_RUN:
                commands.append(line)
    return commands


def run(line: str, folder: Path) -> None:
    words = shlex.split(line, comments=True)
    if words[0] == "python":  # a script of the repository, run from its root
        result = subprocess.run([sys.executable, *words[1:]], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
        print(result.stdout)
        return
    assert words[0] == "neurostorm", line
    args = [match for word in words[1:] for match in (sorted(glob.glob(word)) if "*" in word else [word])]
    if args[0] in TRAINS:
        args += ["optim.epochs=1", "trainer.progress=false"]
    assert main(args) == 0, line


@pytest.fixture(scope="module")
def readme_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    cwd = os.getcwd()
    os.chdir(folder)
    yield folder
    os.chdir(cwd)


def test_the_readme_has_commands_to_run():
    commands = readme_commands()
    assert commands[0].startswith("neurostorm simulate") and len(commands) > 15
    assert any(line.startswith("python -m benchmarks.haxby") for line in commands)


@pytest.mark.parametrize("line", readme_commands(), ids=lambda line: " ".join(line.split()[:4]))
def test_readme_command(readme_folder, line):
    run(line, readme_folder)


@pytest.mark.parametrize("block", readme_blocks("python"))
def test_readme_python_snippet(readme_folder, block):
    exec(compile(block, "README.md or docs/user_guide", "exec"), {})
