"""Packaging promises: the core imports without torch; ``python -m build`` makes an sdist and a
wheel that hold ``lowrank_prox`` only, with the license, and that install into a clean venv
and pass a smoke test, without torch (a clear ImportError) and with it.  Offline: the build
runs ``--no-isolation`` and the venv installs the wheel with ``--no-index --no-deps``."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The files an sdist is made from; everything else in the repository is not packaged.
SDIST_INPUTS = ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "lowrank_prox")


def test_core_import_does_not_import_torch():
    code = (
        "import sys, lowrank_prox, lowrank_prox.lorsum, lowrank_prox.svd, lowrank_prox.geometry\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "print(len(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0", out.stdout


@pytest.mark.parametrize("module", ["lowrank_prox.nn", "lowrank_prox.optim",
                                    "lowrank_prox.optim.distributed"])
def test_missing_torch_gives_clear_import_error(module):
    code = (
        "import sys; sys.modules['torch'] = None  # torch absent\n"
        "import lowrank_prox\n"
        f"import {module}\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: lowrank_prox.") and "lowrank_prox[torch]" in last, last


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    if importlib.util.find_spec("build") is None:
        pytest.skip("the `build` package (dev extra) is not installed")
    src = tmp_path_factory.mktemp("src")
    for name in SDIST_INPUTS:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Warning" not in log and "deprecated" not in log.lower(), log[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return sdist, wheel


def test_wheel_holds_lowrank_prox_only_with_license(dists):
    _, wheel = dists
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = zf.read(meta).decode()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"lowrank_prox", meta.split("/")[0]}, tops
    assert "lowrank_prox/optim/distributed.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: BSD-3-Clause" in metadata
    extras = [ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:")]
    pinned = [ln for ln in extras if "==" in ln.split(";")[0]]
    assert extras and not pinned, f"extras give ranges, not pins: {pinned}"


def test_sdist_has_sources_and_license(dists):
    sdist, _ = dists
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    assert {"LICENSE", "pyproject.toml", "README.md", "lowrank_prox/__init__.py"} <= names
    assert not any(n.startswith("analysis/") for n in names)


def _deps_dir(tmp_path):
    """numpy, scipy and array-api-compat of this interpreter, linked into a folder of their own
    (so the clean venv sees them, and nothing else: no torch, no editable lowrank_prox)."""
    deps = tmp_path / "deps"
    deps.mkdir()
    for name in ("numpy", "numpy.libs", "scipy", "scipy.libs", "array_api_compat"):
        spec = importlib.util.find_spec(name.split(".")[0])
        base = Path(spec.origin).parent.parent
        if (base / name).exists():
            (deps / name).symlink_to(base / name)
    return deps


SMOKE = """
import sys
import numpy as np
import lowrank_prox as lp
assert lp.__file__.startswith(sys.prefix), lp.__file__
rng = np.random.default_rng(0)
U, V = rng.standard_normal((30, 3)), rng.standard_normal((20, 3))
Y = lp.LowRankSum([(1.0, U, V), (-0.1, rng.standard_normal((30, 5)), rng.standard_normal((20, 5)))])
U1, V1 = lp.lorsum(Y, U, V, iters=30)
Uk, s, Vh = lp.truncated_svd(Y, 3)
print("lorsum error", float(np.abs(U1 @ V1.T - (Uk * s) @ Vh).max()))
try:
    import lowrank_prox.optim
except ImportError as exc:
    print("optim:", exc)
else:
    from lowrank_prox.optim import PSILoRA
    print("optim: imported", PSILoRA.__name__)
"""


def test_wheel_installs_into_clean_venv_and_runs(dists, tmp_path):
    _, wheel = dists
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "--quiet",
                    "--no-index", "--no-deps", str(wheel)], check=True, timeout=120)
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = subprocess.run([str(vpy), "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip()
    (Path(site) / "deps.pth").write_text(str(_deps_dir(tmp_path)) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"

    run = subprocess.run([str(vpy), "-c", SMOKE], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert float(lines[0].split()[-1]) < 1e-10
    assert "lowrank_prox.optim needs PyTorch" in lines[1] and "lowrank_prox[torch]" in lines[1]

    torch_dir = Path(importlib.util.find_spec("torch").origin).parent.parent
    env["PYTHONPATH"] = str(torch_dir)  # now with torch (and this venv's other packages)
    run = subprocess.run([str(vpy), "-c", SMOKE], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines()[1] == "optim: imported PSILoRA"
