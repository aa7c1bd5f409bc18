"""The wheel is complete: built from the sources, installed into a fresh virtual environment
outside the checkout, it imports from there (every subpackage, the C extension, ``py.typed``)
and ``python -m shmdiag demo`` runs. No network: the wheel is built without build isolation
(setuptools and wheel come with the ``test`` extra) and the venv sees this environment's
numpy, orjson and psutil (and pip) after its own packages."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "shmdiag"
# What a wheel is built from: the package and the files its metadata reads, nothing else.
SOURCES = ["pyproject.toml", "setup.py", "README.md", "LICENSE"]


def _run(args: list, *, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_NO_INPUT"] = "1"
    cp = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert cp.returncode == 0, f"{args}: exit {cp.returncode}\n{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}"
    return cp


def _source_modules() -> set[str]:
    """Every module of the package in the checkout, as dotted names (the C extension's included)."""
    mods = set()
    for py in PKG.rglob("*.py"):
        rel = py.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods.add(".".join(parts))
    return mods


def _subpackages() -> list[str]:
    return sorted(".".join(d.relative_to(ROOT).parts) for d in [PKG, *PKG.rglob("*")]
                  if d.is_dir() and (d / "__init__.py").exists())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    for mod in ("setuptools", "wheel"):
        if subprocess.run([sys.executable, "-c", f"import {mod}"], capture_output=True).returncode:
            pytest.fail(f"building the wheel without network needs {mod!r} installed: pip install -e '.[test]'")
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"  # a copy, so that the build leaves no build/ or egg-info in the checkout
    src.mkdir()
    for name in SOURCES:
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(PKG, src / "shmdiag", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
    out = work / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", "-w", out, src], cwd=work, timeout=300)
    (whl,) = out.glob("shmdiag-*.whl")
    return whl


def test_the_wheel_holds_every_module_the_extension_and_py_typed(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    in_wheel = {n[:-3].replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py")}
    missing = _source_modules() - in_wheel
    assert not missing, f"modules left out of the wheel: {sorted(missing)}"
    assert "shmdiag/py.typed" in names
    schemas = sorted(p.name for p in (PKG / "schemas").glob("*.schema.json"))
    assert schemas and all(f"shmdiag/schemas/{n}" in names for n in schemas), names
    for asset in ("index.html", "dashboard.js", "dashboard.css"):  # the dashboard works offline: shipped
        assert f"shmdiag/web/static/{asset}" in names
    assert [n for n in names if n.startswith("shmdiag/core/_native.") and n.endswith(".so")], names
    assert any(n.endswith(".dist-info/LICENSE") or "/licenses/" in n for n in names), names
    from shmdiag import __version__
    assert wheel.name.startswith(f"shmdiag-{__version__}-"), wheel.name


def test_installed_wheel_imports_from_the_venv_and_runs_the_demo(wheel, tmp_path):
    venv = tmp_path / "venv"
    assert ROOT not in venv.parents
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, timeout=120)
    py = venv / "bin" / "python"
    # The venv sees this environment's packages (numpy, orjson, psutil, pip) after its own, by a
    # path file: like --system-site-packages, but also when this environment is itself a venv, and
    # without running this environment's .pth files (an editable install's finder among them).
    venv_site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          cwd=tmp_path, timeout=60).stdout.strip())
    outer = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    (venv_site / "outer-env.pth").write_text("".join(f"{d}\n" for d in outer if os.path.isdir(d)))
    # This environment's pip, installing into the venv.
    _run([py, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--no-index", "--disable-pip-version-check",
          "-q", wheel], cwd=tmp_path, timeout=300)

    probe = textwrap.dedent(
        """
        import importlib, json, os, sys
        import shmdiag, shmdiag.core._native as native
        mods = {m: importlib.import_module(m).__file__ for m in sys.argv[1:]}
        print(json.dumps({"file": shmdiag.__file__, "native": native.__file__, "mods": mods,
                          "typed": os.path.exists(os.path.join(os.path.dirname(shmdiag.__file__), "py.typed")),
                          "version": shmdiag.__version__, "prefix": sys.prefix,
                          "schema": __import__("shmdiag.export.schema").export.schema.load_schema("event")["$id"]}))
        """
    )
    cp = _run([py, "-c", probe, *_subpackages()], cwd=tmp_path, timeout=60)
    got = json.loads(cp.stdout)
    installed_in = Path(got["file"]).resolve().parent.parent
    assert Path(got["prefix"]).resolve() == venv.resolve()
    assert venv.resolve() in installed_in.parents, f"shmdiag imported from {got['file']}, not from the venv"
    assert ROOT not in Path(got["file"]).resolve().parents
    for name, path in [("shmdiag.core._native", got["native"]), *got["mods"].items()]:
        assert venv.resolve() in Path(path).resolve().parents, (name, path)
    assert got["typed"]
    assert got["schema"].endswith("/event.schema.json")  # the JSON Schemas are package data
    from shmdiag import __version__
    assert got["version"] == __version__

    # The console script and the module both work from there.
    assert _run([venv / "bin" / "shmdiag", "--version"], cwd=tmp_path, timeout=60).stdout.split()[-1] == __version__
    demo = _run([py, "-m", "shmdiag", "demo", "--seconds", "0.5"], cwd=tmp_path, timeout=120)
    out = demo.stdout
    assert "4 writer processes" in out, out
    for needle in ("stats:", "health: ", "peers:", "last events", "Peer connected: ", "Message "):
        assert needle in out, (needle, out)
    assert "Traceback" not in demo.stderr, demo.stderr
