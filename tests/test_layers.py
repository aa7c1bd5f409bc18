"""The layer rule, checked on the source: a module imports only from its own layer and the
layers below it, and nothing outside ``shmdiag.core`` touches the segment's memory."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "shmdiag"

# Lowest first; the same order is written down in shmdiag/__init__.py and the README.
LAYERS: list[tuple[str, ...]] = [
    ("shmdiag._version", "shmdiag.core"),
    ("shmdiag.views",),
    ("shmdiag.export",),
    ("shmdiag.inspector",),
    ("shmdiag.collector",),
    ("shmdiag.recorder", "shmdiag.loghandler"),
    ("shmdiag.metrics", "shmdiag.alerts", "shmdiag.archive", "shmdiag.web"),
    ("shmdiag.cli", "shmdiag.loadgen", "shmdiag.__main__", "shmdiag"),
]

# Attributes of core.segment.Segment that expose the mapped memory itself.
SEGMENT_MEMORY = {"native", "slots", "slot_words", "shards", "peers", "ops", "header", "_mmap"}


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and the README)"
    return best


def modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def imports(module: str, path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "shmdiag"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "shmdiag":
                continue
            # "from shmdiag.core import layout" imports the module shmdiag.core.layout
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.append((node.lineno, sub if (PKG.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                              or (PKG.parent / sub.replace(".", "/")).is_dir() else target))
    return found


def test_every_module_is_in_a_layer():
    for module, _ in modules():
        layer_of(module)


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_imports_point_down(module, path):
    mine = layer_of(module)
    bad = [f"line {line}: {target} (layer {layer_of(target)})" for line, target in imports(module, path)
           if layer_of(target) > mine]
    assert not bad, f"{module} (layer {mine}) imports from above: {bad}"


@pytest.mark.parametrize("module,path", [(m, p) for m, p in modules() if not m.startswith("shmdiag.core")],
                         ids=[m for m, _ in modules() if not m.startswith("shmdiag.core")])
def test_only_the_core_touches_segment_memory(module, path):
    tree = ast.parse(path.read_text(), str(path))
    # A Segment may be held and handed to core functions; its memory is only read through them.
    bad = [f"line {n.lineno}: {ast.unparse(n)}" for n in ast.walk(tree)
           if isinstance(n, ast.Attribute) and n.attr in SEGMENT_MEMORY and "seg" in ast.unparse(n.value).lower()]
    # ... and only by the object that holds it: no reaching into another object's segment.
    bad += [f"line {n.lineno}: {ast.unparse(n)}" for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and n.attr == "_seg" and ast.unparse(n.value) != "self"]
    bad += [f"line {line}: imports {t}" for line, t in imports(module, path) if t.startswith("shmdiag.core._native")]
    assert not bad, f"{module} reaches into the segment: {bad}"
