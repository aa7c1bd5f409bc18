"""Every JSON shape shmdiag writes is documented and kept: each command's --json output, the
lines of tail and of an NDJSON export, and an export document are validated against the JSON
Schemas shipped in the package (shmdiag/schemas, strict: no undocumented field passes), and
docs/json.md names every field of every schema."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from shmdiag import Inspector, Severity
from shmdiag.export import dicts as D
from shmdiag.export.schema import KINDS, SCHEMA_VERSION, load_schema, schema_names

from helpers import CLI, raw_segment, run_cli, start_tail, write

DOCS = Path(__file__).resolve().parent.parent / "docs" / "json.md"


@pytest.fixture(scope="module")
def validate():
    """validate(doc, kind): raises jsonschema.ValidationError where ``doc`` departs from its schema."""
    schemas = {n: load_schema(n) for n in schema_names()}
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas.values())
    validators = {n: Draft202012Validator(s, registry=registry) for n, s in schemas.items()}

    def check(doc: object, kind: str) -> None:
        validators[kind].validate(doc)

    return check


def _traffic(name: str) -> None:
    write(name, [["conn", "p1", "203.0.113.5:8333"], ["conn", "p2", "198.51.100.7:8333"],
                 *[["msg", "p1", "inv", "inbound", 61]] * 3, ["msg", "p2", "block", "outbound", 1_500_000],
                 ["err", "p2", "bad checksum", "read"], ["lat", "ping", 0.012, "p1"],
                 ["event", "custom_thing", "hello \"world\"\n", 2, "p1"],
                 ["disc", "p2", "198.51.100.7:8333", "timeout"]])


def _json(cp: subprocess.CompletedProcess) -> dict:
    assert cp.returncode in (0, 1, 2), cp.stderr
    return orjson.loads(cp.stdout)


def test_schemas_are_valid_and_cover_every_kind():
    names = schema_names()
    for n in names:
        s = load_schema(n)
        Draft202012Validator.check_schema(s)
        assert s["$id"].endswith(f"/{SCHEMA_VERSION}/{n}.schema.json"), s["$id"]
    for kind in KINDS:
        s = load_schema(kind)
        assert s["properties"]["kind"] == {"const": kind}
        assert s["required"][:2] == ["schema_version", "kind"] and s["additionalProperties"] is False
    assert load_schema("common")["$defs"]["schema_version"]["const"] == SCHEMA_VERSION
    with pytest.raises(FileNotFoundError, match="no JSON schema 'nope': known "):
        load_schema("nope")


def _fields(schema: dict) -> set[str]:
    """Every property name a schema (and its $defs) declares."""
    out: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                out.update(props)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return out


def test_docs_name_every_field_and_kind():
    text = DOCS.read_text()
    documented = set(re.findall(r"`([a-z0-9_]+)`", text))
    for n in schema_names():
        missing = _fields(load_schema(n)) - documented
        assert not missing, f"docs/json.md does not name {sorted(missing)} of {n}.schema.json"
    assert set(KINDS) <= documented


@pytest.mark.multiprocess
def test_every_command_output_validates(make_recorder, validate, tmp_path):
    rec = make_recorder(1000)
    _traffic(rec.name)

    ls = _json(run_cli("ls", "--json"))
    validate(ls, "rings")
    (row,) = [r for r in ls["rings"] if r["name"] == rec.name]
    assert (row["creator_pid"], row["capacity"], row["retained"], row["total_events"], row["writers_alive"]) == (
        os.getpid(), 1000, 10, 10, 0)
    assert row["created_at"].endswith("Z") and row["uptime"] >= 0

    stats = _json(run_cli("stats", rec.name, "--json"))
    validate(stats, "stats")
    assert stats["total_events"] == 10 and stats["events_by_type"]["message"] == 4

    health = _json(run_cli("health", rec.name, "--json"))
    validate(health, "health")
    # The same names as ls for the same facts.
    assert (health["retained"], health["capacity"], health["total_events"]) == (10, 1000, 10)

    peers = _json(run_cli("peers", rec.name, "--json"))
    validate(peers, "peers")
    assert [p["peer_id"] for p in peers["peers"]] == ["p2", "p1"] and peers["omitted_peers"] == 0
    one = _json(run_cli("peers", rec.name, "--json", "--limit", "1"))
    validate(one, "peers")
    assert [p["peer_id"] for p in one["peers"]] == ["p2"] and one["omitted_peers"] == 1
    assert one["peers"][0]["errors"] == 1 and one["peers"][0]["bytes_sent_per_msg"] == {"block": 1_500_000}

    cp = run_cli("tail", rec.name, "-n", "5", "--json")
    assert cp.returncode == 0, cp.stderr
    lines = [orjson.loads(x) for x in cp.stdout.splitlines()]
    assert len(lines) == 5
    for x in lines:
        validate(x, "event")
    assert lines[-1]["event_type"] == "peer_disconnected"

    # export, json: one document; with --with-peers the peers and writers too.
    cp = run_cli("export", rec.name, "--format", "json", "--with-peers")
    doc = _json(cp)
    validate(doc, "export")
    assert doc["exported"] == len(doc["events"]) == 10 and doc["skipped"] == 0
    validate(doc["stats"], "stats")
    validate(doc["health"], "health")
    validate(doc["peers"], "peers")
    assert len(doc["peers"]["peers"]) == 2
    assert [w["total_events"] for w in doc["writers"]] == [10] and doc["writers"][0]["state"] == "exited"
    assert doc["latency"]["ping"]["count"] == 1
    plain = _json(run_cli("export", rec.name, "--format", "json"))
    validate(plain, "export")
    assert "peers" not in plain and "writers" not in plain

    # export, ndjson: events only, every line; the metadata in a file of its own.
    out, meta = tmp_path / "x.ndjson", tmp_path / "x.meta.json"
    cp = run_cli("export", rec.name, "--format", "ndjson", "-o", str(out), "--meta", str(meta), "--with-peers")
    assert cp.returncode == 0, cp.stderr
    rows = [orjson.loads(x) for x in out.read_bytes().splitlines()]
    assert len(rows) == 10 and all(r["kind"] == "event" for r in rows)
    for r in rows:
        validate(r, "event")
    assert rows == doc["events"]
    m = orjson.loads(meta.read_bytes())
    validate(m, "export")
    assert "events" not in m and m["exported"] == 10 and m["peers"]["total_peers"] == 2


def test_meta_needs_a_file_of_its_own(rec):
    cp = run_cli("export", rec.name, "--format", "ndjson", "--meta", "-")
    assert cp.returncode == 2 and cp.stdout == "" and len(cp.stderr.splitlines()) == 1, cp
    assert "--meta needs a file of its own" in cp.stderr


def test_ls_json_of_a_ring_that_cannot_be_read_validates(make_recorder, validate):
    rec = make_recorder(100)
    with raw_segment(rec.name) as mm:
        mm[40:44] = b"\xff\xff\xff\xff"  # max_shards, without fixing the header checksum
    doc = _json(run_cli("ls", "--json"))
    validate(doc, "rings")
    (row,) = [r for r in doc["rings"] if r["name"] == rec.name]
    assert "corrupt header" in row["note"] and row["capacity"] is None and row["creator_pid"] == os.getpid()


@pytest.mark.multiprocess
def test_tail_follow_json_tells_gaps_from_events(make_recorder, procs, validate):
    rec = make_recorder(64)
    p, reader = start_tail(rec.name, procs, "--json")
    os.kill(p.pid, signal.SIGSTOP)
    try:
        write(rec.name, [["many", 500, "flood"], ["event", "marker", "the-end", 1, ""]])
    finally:
        os.kill(p.pid, signal.SIGCONT)
    got = [orjson.loads(x) for x in reader.lines_until(lambda line, _: b"the-end" in line)]
    kinds = {g["kind"] for g in got}
    assert kinds == {"event", "gap"}, kinds
    for g in got:
        validate(g, g["kind"])
    gaps = [g for g in got if g["kind"] == "gap"]
    assert sum(g["skipped"] for g in gaps) >= 500 - 64
    assert all("seq" not in g for g in gaps) and all("skipped" not in g for g in got if g["kind"] == "event")
    os.kill(p.pid, signal.SIGINT)
    assert p.wait(timeout=10) == 0


def _plain(d: dict) -> dict:
    """A dict of export/dicts.py as a JSON reader sees it."""
    return orjson.loads(D.dumps(d))


def test_python_api_shapes_validate(rec, validate):
    """The Inspector's exports and the dicts a web endpoint would serve are the same shapes."""
    rec.record_peer_connection("p1", "203.0.113.5:8333")
    rec.record_error("p1", KeyError("feefilter"), "parse")
    with Inspector.attach(rec.name) as insp:
        doc = orjson.loads(insp.export_events("json", with_peers=True))
        validate(doc, "export")
        lines = insp.export_events("ndjson").splitlines()
        assert [orjson.loads(x) for x in lines] == doc["events"]
        meta = io.BytesIO()
        sink = io.BytesIO()
        n = insp.write_export(sink, "ndjson", meta=meta)
        assert n == 2 and len(sink.getvalue().splitlines()) == 2
        m = orjson.loads(meta.getvalue())
        validate(m, "export")
        assert m["exported"] == 2 and m["skipped"] == 0 and "peers" not in m
        validate(_plain(D.stats_to_dict(insp.get_stats())), "stats")
        validate(_plain(D.health_to_dict(insp.health_check())), "health")
        validate(_plain(D.network_to_dict(insp.get_network_diagnostic(), 0)), "peers")
        validate(_plain(D.event_to_dict(insp.get_events(1)[0])), "event")
    validate(_plain(D.health_to_dict(insp.health_check())), "health")  # closed: "stopped", still the same shape
    assert insp.health_check().status == "stopped"


def test_one_vocabulary_for_one_concept():
    """The renames in export/dicts.py leave no JSON field under two names: the health,
    ring, peer and writer names all map onto the names the other shapes use."""
    schemas = {n: _fields(load_schema(n)) for n in schema_names()}
    old = {"event_count", "max_events", "events_overwritten", "events_lost", "events_abandoned", "events_expired",
           "events_in_flight", "peers_untracked", "owner_pid", "owner_alive", "live_writers", "age", "created",
           "peer_diagnostics", "error_count", "bytes_recv_per_msg", "recorded"}
    for n, fields in schemas.items():
        assert not fields & old, (n, fields & old)
    assert {"retained", "capacity", "total_events"} <= schemas["health"] & schemas["rings"]
    assert {"overwritten", "lost", "abandoned", "total_events"} <= schemas["health"] & schemas["writer"]
    assert "untracked_peers" in schemas["health"] & schemas["peers"]


def test_every_severity_and_a_unicode_message_validate(make_recorder, validate):
    rec = make_recorder(100)
    for s in Severity:
        write(rec.name, [["event", "t", f"sévérité {s.name} \u2603 \x01", int(s), ""]])
    doc = orjson.loads(rec.export_events("json"))
    validate(doc, "export")
    assert [e["severity"] for e in doc["events"]] == [s.name for s in Severity]


def test_loadgen_report_nests_the_same_shapes(validate):
    """loadgen --json is versioned too, and nests what stats --json and health --json print."""
    cp = subprocess.run([*CLI, "loadgen", "--writers", "1", "--events", "200", "--json"], capture_output=True,
                        timeout=120)
    assert cp.returncode == 0, cp.stderr
    report = json.loads(cp.stdout)
    assert report["schema_version"] == SCHEMA_VERSION and report["kind"] == "loadgen"
    validate(report["stats"], "stats")
    validate(report["health"], "health")


def test_optional_fields_of_other_commands(rec, validate):
    """stats --watch --json adds sampled_at and rates to a stats object; the archive's query
    adds host, ring and generation to an event. Anything else is refused: a new field must be
    documented (here and in docs/json.md) before it ships."""
    from jsonschema import ValidationError

    rec.record_message("p", "inv", "inbound", 1)
    s = _plain(D.stats_to_dict(rec.get_stats()))
    validate({**s, "sampled_at": "2026-11-30T07:12:03.123456Z", "rates": None}, "stats")
    validate({**s, "sampled_at": "2026-11-30T07:12:03Z",
              "rates": {"interval_seconds": 1.0, "events_per_second": 3.5, "by_severity": {"INFO": 3.5},
                        "by_type": {"message": 3.5}}}, "stats")
    e = _plain(D.event_to_dict(rec.get_events(1)[0]))
    validate({**e, "host": "h1", "ring": rec.name, "generation": 1_764_486_723_000_000_000}, "event")
    for doc, kind in (({**s, "time": "2026-11-30T07:12:03Z"}, "stats"), ({**e, "lag": 1}, "event"),
                      ({**s, "sampled_at": "2026-11-30 07:12:03"}, "stats"),  # not ISO with a Z
                      ({**e, "kind": "gap"}, "event"), ({**e, "schema_version": 2}, "event")):
        with pytest.raises(ValidationError):
            validate(doc, kind)


def test_health_probe_fields_in_the_shared_names(rec, validate):
    """The recent-window health fields (the health probe's) validate under the shared names,
    and a dead writer's counts use the writers' names."""
    h = _plain(D.health_to_dict(rec.health_check()))
    probe = {
        "reasons": [{"condition": "writers_died", "status": "warning", "message": "1 writer died"},
                    {"condition": "stopped", "status": "stopped", "message": "inspector is closed"}],
        "error_rate_min_severity": "INFO", "errors": 0, "rated_events": 0, "window": 300.0,
        "window_covered": 12.5, "window_source": "creation", "window_total_events": 3, "window_lost": 0,
        "window_abandoned": 1, "window_errors": 0, "window_rated_events": 2, "window_error_rate": 0.0,
        "window_error_rate_covered": 12.5,
        "window_writers_died": 1, "window_seqs_unused": 0, "window_untracked_peers": 0,
        "last_event": "2026-11-30T07:12:03.5Z", "idle_seconds": 0.25, "stall_after": 300.0,
        "dead_writers": [{"pid": 4242, "total_events": 3, "lost": 0, "abandoned": 1, "last_event": None,
                          "in_window": True}],
    }
    validate({**h, **probe}, "health")
    assert D.HEALTH_NAMES["window_events_lost"] == "window_lost" and D.WRITER_NAMES["recorded"] == "total_events"


def test_gap_and_lag_records(validate):
    """A filtering follower's gap (matched, unknown) and a lag line are documented shapes."""
    from shmdiag.core.follow import Gap

    g = Gap(overwritten=5, unreadable=1, first_seq=10, last_seq=15)
    d = _plain(D.gap_to_dict(g))
    validate(d, "gap")
    assert (d["kind"], d["skipped"], d["first_seq"], d["last_seq"]) == ("gap", 6, 10, 15)
    validate({**d, "matched": 2, "unknown": 5}, "gap")
    validate(_plain(D.lag_to_dict(1200, 2.5)), "lag")
    assert D.lag_to_dict(0, 0.0) == {"schema_version": SCHEMA_VERSION, "kind": "lag", "behind": 0, "lag_seconds": 0.0}


def test_stats_watch_json_lines_validate(rec, validate):
    """stats --watch --json: one stats object per refresh, with sampled_at and rates."""
    rec.record_message("p", "inv", "inbound", 1)
    cp = run_cli("stats", rec.name, "--watch", "0.2", "--count", "2", "--json")
    assert cp.returncode == 0, cp.stderr
    lines = [orjson.loads(x) for x in cp.stdout.splitlines()]
    assert len(lines) == 2 and lines[0]["rates"] is None and lines[1]["rates"]["interval_seconds"] > 0
    for x in lines:
        validate(x, "stats")
        assert x["sampled_at"].endswith("Z")


def test_web_only_documents(validate):
    """The web API's own shapes (tests/test_web_api.py validates them as served): the stream's
    end record, and the gap records of the stream with "dropped"."""
    validate({**D.doc_head("end"), "reason": "RecorderClosedError: inspector closed"}, "end")
    gap = {**D.doc_head("gap"), "skipped": 7, "overwritten": 0, "unreadable": 0, "dropped": 7,
           "first_seq": 10, "last_seq": 16}
    validate(gap, "gap")
    validate({**D.doc_head("latency"), "operations": {"ping": {"count": 1, "errors": 0, "mean": 0.1, "p50": 0.1,
                                                                "p90": 0.1, "p99": 0.1, "max": 0.1}}}, "latency")
    with pytest.raises(Exception, match="not valid under any|Additional properties|is not of type"):
        validate({**D.doc_head("ring"), "name": "x", "capacity": 1, "creator_pid": 1, "created_ns": 1,
                  "created_at": "2026-11-30T07:00:00Z", "extra": 1}, "ring")
