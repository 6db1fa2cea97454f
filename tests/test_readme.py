"""Every ```python block of README.md and of the docs (docs/**/*.md) runs and prints what the
text says it prints.

How a block is checked (also in docs/contributing.md, for contributors):

- The block must be followed, after blank lines only, by a ```text block: the output a reader
  should see.  Each non-empty line of that block must appear in the printed output, in order
  (other printed lines, e.g. a Trainer's log, are allowed in between).  Text must match exactly
  (up to runs of whitespace); numbers match to 5 % relative (print rounded values; print a
  comparison such as ``< 1e-12`` rather than a number at rounding level).
- A block whose first lines contain ``run with: torchrun ARGS NAME.py`` is saved as ``NAME.py``
  and launched with ``python -m torch.distributed.run --standalone ARGS NAME.py``.
- Any other block is executed in this process (``__name__ == "__main__"``) in a temporary
  directory, each in a fresh namespace.
- Opt-out, only for a block that cannot run offline: a first line ``# doc-test: skip REASON``.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP = re.compile(r"#\s*doc-test:\s*skip\b(.*)")
TORCHRUN = re.compile(r"run with:\s*torchrun\s+(.*?)\s*(\w+\.py)\b")
BLOCK = re.compile(
    r"^```python[^\n]*\n(?P<code>.*?)^```[ \t]*\n(?:[ \t]*\n)*"
    r"(?:^```text[^\n]*\n(?P<out>.*?)^```[ \t]*$)?",
    re.S | re.M,
)
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
LAUNCH_TIMEOUT_S = 300


def sources():
    """README.md and the hand-written docs pages (not the generated docs/auto)."""
    docs = ROOT / "docs"
    pages = sorted(p for p in docs.rglob("*.md")
                   if p.relative_to(docs).parts[0] not in ("auto", "_build"))
    return [ROOT / "README.md", *pages]


def blocks():
    found = []
    for path in sources():
        text = path.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append(pytest.param(path, line, match["code"], match["out"],
                                      id=f"{path.relative_to(ROOT)}:{line}"))
    return found


def _tokens(line):
    """``(text with numbers replaced by #, [numbers])`` of one output line."""
    line = " ".join(line.split())
    return NUMBER.sub("#", line), [float(x) for x in NUMBER.findall(line)]


def line_matches(expected, actual, rel=0.05):
    (t_exp, n_exp), (t_act, n_act) = _tokens(expected), _tokens(actual)
    return t_exp == t_act and all(math.isclose(a, b, rel_tol=rel, abs_tol=0.0)
                                  for a, b in zip(n_exp, n_act, strict=True))


def missing_lines(expected, actual):
    """The lines of ``expected`` not found, in order, in ``actual`` (empty: output agrees)."""
    want = [ln for ln in expected.splitlines() if ln.strip()]
    have = [ln for ln in actual.splitlines() if ln.strip()]
    i = 0
    for k, line in enumerate(want):
        while i < len(have) and not line_matches(line, have[i]):
            i += 1
        if i == len(have):
            return want[k:]
        i += 1
    return []


def _run_inline(code, where):
    buf = io.StringIO()
    namespace = {"__name__": "__main__"}
    with contextlib.redirect_stdout(buf):
        exec(compile(code, where, "exec"), namespace)  # noqa: S102
    return buf.getvalue()


def _run_torchrun(code, args, name, tmp_path):
    (tmp_path / name).write_text(code)
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", *args.split(), name],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize(("path", "line", "code", "expected"), blocks())
def test_block_runs_and_prints_what_the_text_says(path, line, code, expected, tmp_path,
                                                   monkeypatch):
    where = f"{path.relative_to(ROOT)}:{line}"
    head = "\n".join(code.splitlines()[:3])
    if skip := SKIP.search(head):
        pytest.skip(f"{where}: {skip[1].strip() or 'marked doc-test: skip'}")
    assert expected is not None, (
        f"{where}: follow the block with a ```text block showing what it prints")
    assert expected.strip(), f"{where}: the ```text output block is empty"
    if launch := TORCHRUN.search(head):
        printed = _run_torchrun(code, launch[1], launch[2], tmp_path)
    else:
        monkeypatch.chdir(tmp_path)
        printed = _run_inline(code, where)
    missing = missing_lines(expected, printed)
    assert not missing, (
        f"{where}: printed output does not show {missing[0]!r}\n--- printed ---\n{printed}")


def test_there_are_blocks_in_readme_and_docs():
    where = {p.values[0].name if p.values[0].name == "README.md" else "docs"
             for p in blocks()}
    assert where == {"README.md", "docs"}


def test_output_comparison_can_fail():
    assert missing_lines("loss 0.50\nrank 4", "epoch 1\nloss 0.51\nrank 4\n") == []
    assert missing_lines("loss 0.50", "loss 0.60") == ["loss 0.50"]
    assert missing_lines("rank 4\nloss 0.5", "loss 0.5\nrank 4") == ["loss 0.5"]
    assert missing_lines("holds: True", "holds: False") == ["holds: True"]
    assert missing_lines("1.0e-04", "1.2e-04") == ["1.0e-04"]
