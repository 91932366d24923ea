"""The docs cannot drift from the code: every shell and Python block of README.md and docs/*.md runs here, as written.

A page's blocks run in order, in one folder of their own (a copy of the source tree with `.venv` linked), like a
reader's terminal or a notebook: what one block writes (a sweep folder, a Python variable) the next may use.
- ```bash blocks run line by line (a line ending in `\\` continues). `.venv/bin/mist-bench ARGS`, `.venv/bin/python -m
  MODULE ARGS` and `.venv/bin/python FILE.py ARGS` run in this process through the same entry points (the console
  script is `sweeps.cli:main`; runpy for the others), which saves starting torch once per line; any other line (make,
  ray, `VAR=value cmd`, pipes) runs in bash. Every line must exit 0.
- ```python blocks run in one namespace per page; a block whose first line is `# NAME.py` is that file's content and
  is written to the page's folder (the next blocks import or name it).
- A block that says `# the doc test runs this block at smoke scale` runs with SMOKE's rewrites (`--scale quick` ->
  `--scale smoke`, ...); each must change it.
- A block that cannot run in a test (it trains for half an hour, starts machines on AWS, is a server) begins with
  `# not run by the doc test: WHY`, visibly; it is reported as skipped with that reason, and the list stays short.
- Other fenced blocks (```text, ```yaml, untagged) are output or examples, not commands: one that looks like a
  command (`make`, `.venv/bin/...`, `python -m`, `ray`, ...) fails the test, so no command escapes it.
Some commands' output is checked too (EXPECT), so a command that runs but stops doing what the README says fails.
"""
from __future__ import annotations

import glob
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL, PYTHON = ("bash", "sh", "shell", "console"), ("python", "py")
FENCE = re.compile(r"^(\s*)```(.*)$")
NOT_RUN = re.compile(r"^#\s*not run by the doc test:\s*(.*)$")
SMOKE = re.compile(r"^#\s*the doc test runs this block at smoke scale\s*$")
FILE = re.compile(r"^#\s*([A-Za-z_][\w/]*\.py)\s*$")
# the rewrites of a block marked as run at smoke scale: the same command, seconds instead of minutes or hours
SMOKE_REWRITES = ((re.compile(r"--scale (quick|paper)\b"), "--scale smoke"),
                  (re.compile(r"\bscale=\"(quick|paper)\""), 'scale="smoke"'),
                  (re.compile(r"--steps \d+"), "--steps 6"))
MAX_NOT_RUN = 8        # a list longer than this means the docs are drifting out of reach of the test
COMMAND_START = re.compile(r"^(\$ )?(make|\.venv/bin/\S+|python3?|pytest|pip|ray|mist-bench|mlflow|export|bash|git)"
                           r"(\s|$)")
SHELL_SYNTAX = re.compile(r"[|&;<>$`]|^\w+=")
GLOB = re.compile(r"[*?[]")   # expanded as bash does (sorted matches; no match: the word itself)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int                 # the opening fence's line number, 1-based
    lang: str
    code: str

    @property
    def id(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page.name
        return f"{page}:{self.line}"

    @property
    def first(self) -> str:
        return next((s.strip() for s in self.code.splitlines() if s.strip()), "")

    @property
    def not_run(self) -> str | None:
        """Why the block is not run (its first line's marker), or None."""
        m = NOT_RUN.match(self.first)
        return None if m is None else m.group(1).strip()

    @property
    def smoke(self) -> bool:
        return any(SMOKE.match(s.strip()) for s in self.code.splitlines())

    @property
    def file(self) -> str | None:
        m = FILE.match(self.first) if self.lang in PYTHON else None
        return None if m is None else m.group(1)

    @property
    def runnable(self) -> bool:
        return self.lang in SHELL + PYTHON

    def as_run(self) -> str:
        """The code the test runs: the smoke rewrites applied when the block asks for them."""
        code = self.code
        if self.smoke:
            for pattern, repl in SMOKE_REWRITES:
                code = pattern.sub(repl, code)
        return code


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, in order."""
    out, lang, start, body = [], None, 0, []
    for i, text in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(text)
        if lang is None and m:
            lang, start, body = m.group(2).strip().lower(), i, []
        elif lang is not None and m and not m.group(2).strip():
            out.append(Block(page, start, lang, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(text)
    assert lang is None, f"{page}: the block opened at line {start} is never closed"
    return out


ALL = [b for p in PAGES for b in blocks(p)]
RUNNABLE = [b for b in ALL if b.runnable]


# --- what some commands must print or leave (beyond exit status 0) -----------------------------------------------------
def _report_said(out: str, wd: Path) -> bool:
    return f"report: mist-bench report {(wd / 'runs/sweeps/smoke').resolve()}" in out.splitlines()


EXPECT: dict[str, Callable[[str, Path], bool]] = {
    ".venv/bin/mist-bench methods": lambda out, wd: "mist " in out and "grid " in out,
    ".venv/bin/mist-bench datasets": lambda out, wd: "mnist_hard" in out.split(),
    ".venv/bin/mist-bench methods mist": lambda out, wd: out.startswith("mist (mist_core.mist:MIST)")
        and "kp_lr " in out and "description" in out,
    ".venv/bin/mist-bench preview mnist_hard": lambda out, wd: (wd / "previews/mnist_hard.png").stat().st_size > 0,
    ".venv/bin/mist-bench train --method mist --dataset mnist_hard --scale smoke":
        lambda out, wd: {"rmse", "det_rate", "step"} <= set(json.loads(out)),
    ".venv/bin/mist-bench sweep sweeps/configs/smoke.yaml --check":
        lambda out, wd: "planned: 6 trials" in out and "estimate: " in out,
    ".venv/bin/mist-bench sweep sweeps/configs/smoke.yaml": _report_said,
    ".venv/bin/mist-bench report runs/sweeps/smoke":
        lambda out, wd: out.strip().endswith("runs/sweeps/smoke/report/report.html")
        and (wd / "runs/sweeps/smoke/report/report.html").is_file(),
    ".venv/bin/python -m bench.ladder table runs/ladder/recon.json": lambda out, wd: "| recon | mist |" in out,
    ".venv/bin/mist-bench slurm sweeps/configs/smoke.yaml --nodes 2 --time 30 --no-requeue --dry-run":
        lambda out, wd: out.startswith("#!/bin/bash\n") and "#SBATCH --nodes=2" in out and "--no-requeue" in out
        and not (wd / "slurm").exists(),
}


# --- running a page -----------------------------------------------------------------------------------------------
def logical_lines(code: str) -> list[tuple[int, str]]:
    """(offset of its first line in the block, the line) for each command of a shell block: continuations joined."""
    out, buf, first = [], "", 0
    for i, text in enumerate(code.splitlines()):
        if not buf:
            first = i
        if text.rstrip().endswith("\\"):
            buf += text.rstrip()[:-1] + " "
            continue
        out.append((first, buf + text))
        buf = ""
    return [(i, s) for i, s in out if shlex.split(s, comments=True)]


@dataclass
class Page:
    """One page's folder and namespace, and how far through its blocks it has run."""

    folder: Path
    namespace: dict = field(default_factory=lambda: {"__name__": "__doc__"})
    done: int = 0                                   # blocks of the page run so far


_PAGES: dict[Path, Page] = {}


def _source_copy(dest: Path) -> None:
    """The source tree as git sees it (tracked files and new ones not ignored), with the project's .venv linked."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / ".venv").symlink_to(ROOT / ".venv")


def _in_process(argv: list[str]) -> int:
    """Run `.venv/bin/mist-bench ...` or `.venv/bin/python [-m] ...` here: the same entry point, one torch import."""
    old = sys.argv
    try:
        if argv[0] == ".venv/bin/mist-bench":
            from sweeps.cli import main

            return main(argv[1:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)   # runpy: "found in sys.modules" for an imported module
            if argv[1] == "-m":
                sys.argv = [argv[2], *argv[3:]]
                runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
            else:
                sys.argv = argv[1:]
                runpy.run_path(argv[1], run_name="__main__")
    except SystemExit as e:
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    return 0


def run_shell(block: Block, folder: Path, capsys) -> None:
    for offset, line in logical_lines(block.as_run()):
        where = f"{block.id}+{offset}: {line.strip()}"
        argv = shlex.split(line, comments=True)
        plain = not SHELL_SYNTAX.search(" ".join(argv)) and (
            argv[0] == ".venv/bin/mist-bench" or (argv[0] == ".venv/bin/python" and len(argv) > 1
                                                  and (argv[1] == "-m" or argv[1].endswith(".py"))))
        if plain:
            capsys.readouterr()
            code = _in_process([x for a in argv for x in (sorted(glob.glob(a)) or [a] if GLOB.search(a) else [a])])
            printed = capsys.readouterr()
            out, err = printed.out, printed.err
        else:
            r = subprocess.run(["bash", "-c", line], cwd=folder, capture_output=True, text=True, timeout=600)
            code, out, err = r.returncode, r.stdout, r.stderr
        assert code == 0, f"{where}\nexit status {code}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
        key = " ".join(argv)
        if key in EXPECT:
            assert EXPECT[key](out, folder), f"{where}\nprinted:\n{out[-3000:]}"


def run_python(block: Block, page: Page) -> None:
    if block.file:
        path = page.folder / block.file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(block.code, encoding="utf-8")
        compile(block.code, str(path), "exec")      # a file with a syntax error fails here, not in a later block
        return
    exec(compile(block.as_run(), block.id, "exec"), page.namespace)


def run_block(block: Block, page: Page, capsys) -> None:
    if block.not_run is not None:
        return
    if block.lang in PYTHON:
        run_python(block, page)
    else:
        run_shell(block, page.folder, capsys)


@pytest.fixture
def in_page(tmp_path_factory, monkeypatch):
    """The page's folder as the working directory, ROOT first on sys.path (as `.venv/bin/python -m` from the
    repository root has it); yields the page state, created with its source copy on first use."""
    def enter(page_path: Path) -> Page:
        if page_path not in _PAGES:
            folder = tmp_path_factory.mktemp(page_path.stem.lower())
            _source_copy(folder)
            _PAGES[page_path] = Page(folder)
        page = _PAGES[page_path]
        monkeypatch.chdir(page.folder)
        monkeypatch.syspath_prepend(str(ROOT))
        return page
    return enter


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
def test_doc_block_runs(block, in_page, capsys):
    """The block, after every earlier block of its page (each run once, in order)."""
    if block.not_run is not None:
        pytest.skip(f"not run by the doc test: {block.not_run}")
    page = in_page(block.page)
    mine = [b for b in RUNNABLE if b.page == block.page]
    for earlier in mine[page.done:mine.index(block) + 1]:
        run_block(earlier, page, capsys)
        page.done += 1


# --- what the docs say about themselves -------------------------------------------------------------------------
def test_not_run_blocks_are_few_and_say_why():
    marked = [(b.id, b.not_run) for b in RUNNABLE if b.not_run is not None]
    assert len(marked) <= MAX_NOT_RUN, marked
    short = [(where, why) for where, why in marked if len(why.split()) < 4]
    assert not short, f"say why a block is not run, in a few words: {short}"


def test_no_command_hides_outside_a_runnable_block():
    """An untagged or text block, or an indented code line, that starts like a command would escape the test."""
    hidden = [f"{b.id}: {b.first}" for b in ALL if not b.runnable and COMMAND_START.match(b.first)]
    for page in PAGES:
        in_fence = False
        for i, text in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            in_fence ^= bool(FENCE.match(text))
            if not in_fence and text.startswith("    ") and COMMAND_START.match(text.strip()):
                hidden.append(f"{page.relative_to(ROOT)}:{i}: {text.strip()}")
    assert not hidden, "put these in a ```bash block (or mark them not run, saying why):\n" + "\n".join(hidden)


def test_smoke_marked_blocks_are_changed_by_the_rewrites():
    unchanged = [b.id for b in RUNNABLE if b.smoke and b.as_run() == b.code]
    assert not unchanged, f"marked as run at smoke scale, but nothing in them is rewritten: {unchanged}"


def test_every_expected_output_belongs_to_a_documented_command():
    lines = {" ".join(shlex.split(line, comments=True)) for b in RUNNABLE if b.lang in SHELL
             for _, line in logical_lines(b.as_run())}
    assert set(EXPECT) <= lines, set(EXPECT) - lines


def test_readme_is_short_and_no_page_speaks_of_how_it_was_made():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 200
    said = [f"{p.relative_to(ROOT)}:{i}: {text.strip()}" for p in PAGES
            for i, text in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"\bsessions?\b|session-\d", text, re.IGNORECASE)]
    assert not said, "say a date, a commit or a machine instead:\n" + "\n".join(said)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_resolve():
    """Every relative link of README.md and docs/ names a file that exists, and its #anchor a heading there."""
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md":
                headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), re.M)}
                if anchor not in headings:
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_console_script_is_the_entry_point_run_in_process():
    """The doc test runs `.venv/bin/mist-bench` lines through sweeps.cli.main: that must be what the script runs."""
    script = (ROOT / ".venv/bin/mist-bench").read_text()
    assert "from sweeps.cli import main" in script


# --- the harness itself fails when a block breaks ---------------------------------------------------------------
def test_a_broken_block_fails(tmp_path, monkeypatch, capsys):
    page = tmp_path / "broken.md"
    page.write_text("```bash\n.venv/bin/mist-bench datasets\n.venv/bin/mist-bench train --method nope "
                    "--dataset mnist_hard\n```\n\n```python\nfrom sweeps import api\napi.no_such_call()\n```\n"
                    "```bash\ntrue && false\n```\n")
    shell, python, subshell = blocks(page)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match=r"(?s)broken.md:1\+1: .*--method nope.*exit status 2"):
        run_shell(shell, tmp_path, capsys)
    with pytest.raises(AttributeError, match="no_such_call"):
        run_python(python, Page(tmp_path))
    with pytest.raises(AssertionError, match="exit status 1"):
        run_shell(subshell, tmp_path, capsys)
