"""Packaging promises: the core imports without torch; README code runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_core_import_does_not_import_torch():
    code = (
        "import sys, lowrank_prox, lowrank_prox.lorsum, lowrank_prox.svd, lowrank_prox.geometry\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(len(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0", out.stdout


def test_readme_python_blocks_run():
    """Every ```python block of the README runs (blocks marked '# not run' are skipped)."""
    text = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "# not run" not in b]
    assert blocks, "the README should show runnable Python"
    for block in blocks:
        namespace = {"__name__": "__readme__"}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
