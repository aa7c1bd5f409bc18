"""Smoke test of bench/compare.py: ``python -m pytest bench/test_compare_smoke.py``.

Runs ``compare.py --quick`` (1-2 writer processes, short runs, read side on 20,000 events; well
under a minute) into a temporary directory and checks that it writes valid JSON with a figure for
every backend, a markdown report and a PNG. Speed is not asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BACKENDS = {"shmdiag", "mp_queue", "logging", "jsonl", "sqlite", "prometheus"}


def test_compare_quick_writes_valid_json(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "compare.py"), "--quick", "--out-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=BENCH.parent)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((tmp_path / "compare.json").read_text())
    assert res["config"]["mode"] == "quick"
    assert set(res["summary"]) == BACKENDS | {"shmdiag_private", "null"}
    for name, s in res["summary"].items():
        sw = s["single_writer"]
        assert sw["end_to_end_ns_per_event"] > 0 and sw["caller_ns_per_event"] > 0, name
        for w in res["config"]["writers"]:
            assert s["throughput"][str(w)]["events_per_s"] > 0, (name, w)
    assert set(res["read"]) == BACKENDS
    assert res["read"]["shmdiag"]["stats_s"] > 0 and res["read"]["shmdiag"]["export_s"] > 0
    assert res["read"]["shmdiag"]["bytes_per_event_segment"] >= 256
    assert {t["target"] for t in res["targets"]}  # the targets are reported
    md = (tmp_path / "compare.md").read_text()
    assert "| shmdiag" in md and "NOT comparable" in md
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
