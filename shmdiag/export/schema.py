"""The version of every JSON shape shmdiag writes, and the JSON Schema files that document them.

Every top-level JSON object shmdiag writes (a command's ``--json`` document, each line of
``tail --json``, each line of an NDJSON export, an export document and its ``--meta`` file)
starts with ``"schema_version"`` (:data:`SCHEMA_VERSION`) and ``"kind"`` (one of :data:`KINDS`),
so a tool can check what it reads before it relies on a field. The version changes when a
field is renamed, removed or changes meaning; adding a field does not change it. The schemas
ship in the package (``shmdiag/schemas/<kind>.schema.json``); ``docs/json.md`` explains them.
"""

from __future__ import annotations

import json
from importlib import resources

__all__ = ["KINDS", "SCHEMA_VERSION", "load_schema", "schema_names"]

SCHEMA_VERSION = 1  # the one place the JSON version is written

# kind -> what writes it
KINDS: dict[str, str] = {
    "rings": "shmdiag ls --json",
    "stats": "shmdiag stats --json; an export's \"stats\"",
    "health": "shmdiag health --json; an export's \"health\"",
    "peers": "shmdiag peers --json; an export's \"peers\" (--with-peers)",
    "event": "tail --json, tail -f --json, an NDJSON export's lines, an export's \"events\"",
    "gap": "tail -f --json: events that could not be read",
    "lag": "tail -f --json: how far behind the writers it is, while catching up",
    "export": "export --format json; export --meta FILE (without \"events\")",
    "alerts": "shmdiag alerts --json; GET /api/alerts",
    "events": "GET /api/events",
    "writers": "GET /api/writers",
    "latency": "GET /api/latency",
    "ring": "GET /api/ring",
    "end": "/api/events/stream: its last record",
}


def schema_names() -> list[str]:
    """The schema files shipped in ``shmdiag/schemas``, without their ``.schema.json``."""
    root = resources.files("shmdiag") / "schemas"
    return sorted(p.name.removesuffix(".schema.json") for p in root.iterdir() if p.name.endswith(".schema.json"))


def load_schema(name: str) -> dict:
    """The JSON Schema (draft 2020-12) named ``name`` (a kind, or a part such as ``"peer"``),
    as a dict; FileNotFoundError naming the known schemas if there is none. Schemas refer to
    each other by their ``$id`` (``https://shmdiag.dev/schemas/1/<name>.schema.json``)."""
    path = resources.files("shmdiag") / "schemas" / f"{name}.schema.json"
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"no JSON schema {name!r}: known {', '.join(schema_names())}") from None
    return json.loads(text)
