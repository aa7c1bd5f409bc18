"""The segment as untrusted input: foreign, old, corrupt or tampered segments give clear errors,
never a crash or a hang; a damaged record is skipped, never returned."""

from __future__ import annotations

import math
import os
import stat
from multiprocessing import shared_memory

import numpy as np
import orjson
import pytest

from shmdiag import (
    CorruptRingError,
    DiagnosticEvent,
    LayoutVersionError,
    NotARingError,
    Recorder,
    RecorderConfig,
    RingExistsError,
    RingNotFoundError,
    Severity,
    ShmDiagError,
)
from shmdiag.core import layout as L

from helpers import (
    fix_header_crc,
    own_shard_base,
    raw_segment,
    read_field,
    shm_path,
    slot_base,
    unique_name,
    write_field,
)

STATIC = L.HEADER_STATIC_SIZE + 4  # the static part and its CRC


@pytest.fixture
def foreign_segment():
    """Factory for plain SharedMemory segments (not rings); closed and unlinked afterwards."""
    made: list[shared_memory.SharedMemory] = []

    def make(size: int, fill: bytes | None = None) -> shared_memory.SharedMemory:
        shm = shared_memory.SharedMemory(create=True, size=size)
        made.append(shm)
        if fill is not None:
            shm.buf[:size] = (fill * (size // len(fill) + 1))[:size]
        return shm

    yield make
    for shm in made:
        shm.close()
        try:
            shm.unlink()
        except FileNotFoundError:
            pass


@pytest.fixture
def ring(make_recorder):
    """A ring holding three known events."""
    r = make_recorder(16)
    for i in range(3):
        r.record_event(DiagnosticEvent("known", f"event {i}", peer_id=f"p{i}", metadata={"i": i}))
    return r


def known_events_intact(r) -> None:
    got = r.get_events(0)
    assert [(e.event_type, e.message, e.peer_id, e.metadata) for e in got] == [
        ("known", f"event {i}", f"p{i}", {"i": i}) for i in range(3)]


# -- attaching to what is not a (good) ring ------------------------------------------------------


def test_attach_missing_name():
    name = unique_name("missing")
    with pytest.raises(RingNotFoundError) as info:
        Recorder.attach(name)
    assert isinstance(info.value, ShmDiagError)
    assert isinstance(info.value, FileNotFoundError)
    assert name in str(info.value)
    assert not os.path.exists(shm_path(name))


def test_attach_invalid_name_is_value_error():
    for bad in ("a/b", "", "../etc"):
        with pytest.raises(ValueError):
            Recorder.attach(bad)


def test_attach_junk_segment(foreign_segment):
    shm = foreign_segment(8192, fill=os.urandom(997))
    with pytest.raises(NotARingError) as info:
        Recorder.attach(shm.name)
    assert isinstance(info.value, ShmDiagError)
    assert bytes(shm.buf[:16]) != b"", "the foreign segment is left as it was"


def test_attach_zero_filled_segment(foreign_segment):
    shm = foreign_segment(8192)
    with pytest.raises(NotARingError):
        Recorder.attach(shm.name)
    assert bytes(shm.buf[:]) == bytes(8192), "attach must not write to a foreign segment"


@pytest.mark.parametrize("size", [1, 100, 4095])
def test_attach_segment_smaller_than_header(foreign_segment, size):
    shm = foreign_segment(size, fill=b"x")
    with pytest.raises(NotARingError):
        Recorder.attach(shm.name)


def test_attach_segment_with_magic_only(foreign_segment):
    shm = foreign_segment(8192)
    shm.buf[:8] = L.MAGIC
    with pytest.raises(ShmDiagError) as info:
        Recorder.attach(shm.name)
    assert isinstance(info.value, (LayoutVersionError, CorruptRingError))


def test_attach_copied_header_wrong_size(foreign_segment, ring):
    """A valid ring header on a segment of the wrong size: corrupt, not a crash."""
    with raw_segment(ring.name) as mm:
        header = bytes(mm[: L.HEADER_SIZE])
    shm = foreign_segment(2 * L.HEADER_SIZE)
    shm.buf[: L.HEADER_SIZE] = header
    with pytest.raises(CorruptRingError, match="bytes"):
        Recorder.attach(shm.name)


# -- tampering with a live ring's header -----------------------------------------------------------


def tamper_and_attach(name: str, tamper, exc_type, match: str | None = None):
    """Apply ``tamper`` to the header, expect ``attach`` to raise, then restore the header."""
    with raw_segment(name) as mm:
        saved = bytes(mm[:STATIC])
        try:
            tamper(mm)
            with pytest.raises(exc_type, match=match):
                Recorder.attach(name)
        finally:
            mm[:STATIC] = saved


def attach_works_again(name: str) -> None:
    other = Recorder.attach(name)
    try:
        known_events_intact(other)
    finally:
        other.close()


@pytest.mark.parametrize("fix_crc", [False, True])
def test_layout_version_changed(ring, fix_crc):
    def tamper(mm):
        write_field(mm, L.HEADER, "version", L.VERSION + 1)
        if fix_crc:
            fix_header_crc(mm)

    tamper_and_attach(ring.name, tamper, LayoutVersionError, str(L.VERSION + 1))
    known_events_intact(ring)
    attach_works_again(ring.name)


def test_magic_changed(ring):
    tamper_and_attach(ring.name, lambda mm: write_field(mm, L.HEADER, "magic", b"NOTMAGIC"), NotARingError)
    attach_works_again(ring.name)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("capacity", 17, "checksum"),
        ("slots_off", 12345, "checksum"),
        ("created_ns", 1, "checksum"),
        ("retention_period", 1.0, "checksum"),
    ],
)
def test_header_field_changed_crc_fails(ring, field, value, match):
    tamper_and_attach(ring.name, lambda mm: write_field(mm, L.HEADER, field, value), CorruptRingError, match)
    known_events_intact(ring)
    attach_works_again(ring.name)


@pytest.mark.parametrize("offset", [12, 33, 50, 89, 100, 113, 118, 123])
def test_one_static_byte_flipped_crc_fails(ring, offset):
    assert offset < L.HEADER_STATIC_SIZE

    def tamper(mm):
        mm[offset] ^= 0x40

    tamper_and_attach(ring.name, tamper, CorruptRingError, "checksum")
    attach_works_again(ring.name)


def test_crc_field_changed(ring):
    def tamper(mm):
        write_field(mm, L.HEADER, "header_crc", int(read_field(mm, L.HEADER, "header_crc")) ^ 1)

    tamper_and_attach(ring.name, tamper, CorruptRingError, "checksum")
    attach_works_again(ring.name)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("capacity", 0, "capacity"),
        ("capacity", (1 << 32) + 1, "capacity"),
        ("capacity", 17, "total_size"),        # a consistent-looking header for a bigger ring
        ("capacity", 1 << 62, "capacity"),
        ("max_shards", 0, "shards"),
        ("max_peers", (1 << 24) + 1, "peers"),
        ("max_shards", 1, "offs|peers_off|slots_off|total_size"),
        ("slots_off", 12345, "slots_off"),
        ("shards_off", 0, "shards_off"),
        ("peers_off", 8, "peers_off"),
        ("total_size", 1 << 40, "total_size"),
        ("header_size", 64, "header_size"),
        ("slot_size", 128, "slot_size"),
        ("shard_size", 1, "shard_size"),
        ("peer_size", 0, "peer_size"),
        ("text_size", 255, "text_size"),
        ("log_level", 9, "log level"),
        ("export_format", 3, "export format"),
        ("cleanup_interval", math.nan, "cleanup_interval"),
        ("retention_period", -1.0, "retention_period"),
        ("retention_period", math.inf, "retention_period"),
    ],
)
def test_header_field_corrupt_with_valid_crc(ring, field, value, match):
    """Someone (a bug, a foreign writer) rewrote a field and the CRC: the field checks still refuse."""
    def tamper(mm):
        write_field(mm, L.HEADER, field, value)
        fix_header_crc(mm)

    tamper_and_attach(ring.name, tamper, CorruptRingError, match)
    known_events_intact(ring)
    attach_works_again(ring.name)


def test_tampered_header_does_not_disturb_creator(ring):
    with raw_segment(ring.name) as mm:
        saved = bytes(mm[:STATIC])
        write_field(mm, L.HEADER, "capacity", 3)
        fix_header_crc(mm)
        try:
            # the creator validated the header once and keeps its own view
            ring.record_event(DiagnosticEvent("during"))
            assert [e.event_type for e in ring.get_events(0)][-1] == "during"
            assert ring.health_check().max_events == 16
        finally:
            mm[:STATIC] = saved
    other = Recorder.attach(ring.name)
    try:
        assert [e.event_type for e in other.get_events(0)] == ["known"] * 3 + ["during"]
    finally:
        other.close()


# -- damaged records -------------------------------------------------------------------------------


def slot_of(event) -> int:
    return event.seq % 16


def test_corrupt_slot_payload_is_skipped(ring):
    victim = ring.get_events(0)[1]
    with raw_segment(ring.name) as mm:
        off = slot_base(mm, slot_of(victim)) + L.SLOT.fields["text"][1] + 2
        mm[off] ^= 0xFF
    got = ring.get_events(0)
    assert [e.message for e in got] == ["event 0", "event 2"]
    assert ring.get_events(limit=1)[0].message == "event 2"
    ring.get_stats()
    ring.health_check()
    ring.export_events()
    # the ring keeps working around it
    ring.record_event(DiagnosticEvent("later"))
    assert [e.message for e in ring.get_events(0)] == ["event 0", "event 2", ""]


@pytest.mark.parametrize("field", ["ts_ns", "value", "checksum", "pid", "severity", "kind", "flags", "lens", "text"])
def test_corrupt_slot_field_is_skipped(ring, field):
    victim = ring.get_events(0)[0]
    with raw_segment(ring.name) as mm:
        base = slot_base(mm, slot_of(victim))
        off = base + L.SLOT.fields[field][1]
        mm[off] ^= 0x01
    assert [e.message for e in ring.get_events(0)] == ["event 1", "event 2"]


def recompute_checksum(mm, base: int) -> None:
    words = np.frombuffer(mm[base: base + L.SLOT_SIZE], dtype="<u8")
    total = int((words * L.CHECKSUM_KEYS).sum(dtype=np.uint64))
    write_field(mm, L.SLOT, "checksum", total, base)


@pytest.mark.parametrize(
    "field, value",
    [
        ("lens", [L.TYPE_CAP + 1, 0, 0, 0, 0]),
        ("lens", [5, L.PEER_CAP + 1, 0, 0, 0]),
        ("lens", [5, 2, 200, 200, 200]),
        ("kind", 200),
        ("severity", 4),      # disagrees with the slot word
    ],
)
def test_out_of_bounds_record_with_valid_checksum_is_skipped(ring, field, value):
    """A record whose checksum holds but whose fields are out of bounds is foreign: skipped."""
    victim = ring.get_events(0)[2]
    with raw_segment(ring.name) as mm:
        base = slot_base(mm, slot_of(victim))
        write_field(mm, L.SLOT, field, value, base)
        recompute_checksum(mm, base)
    assert [e.message for e in ring.get_events(0)] == ["event 0", "event 1"]


def test_slot_word_claiming_wrong_slot_is_skipped(ring):
    victim = ring.get_events(0)[0]
    with raw_segment(ring.name) as mm:
        base = slot_base(mm, slot_of(victim))
        w = int(read_field(mm, L.SLOT, "w", base))
        # same record, but the word says it is sequence number seq + 1 (which maps to another slot)
        write_field(mm, L.SLOT, "w", L.w_make(L.w_seq(w) + 1, L.w_severity(w), L.w_state(w)), base)
    assert [e.message for e in ring.get_events(0)] == ["event 1", "event 2"]


def test_metadata_that_does_not_parse_is_never_a_crash(ring):
    victim = ring.get_events(0)[1]
    with raw_segment(ring.name) as mm:
        base = slot_base(mm, slot_of(victim))
        lens = read_field(mm, L.SLOT, "lens", base)
        meta_off = base + L.SLOT.fields["text"][1] + int(lens[0]) + int(lens[1])
        mm[meta_off] = ord("[")  # '{"i":1}' -> '["i":1}'
        recompute_checksum(mm, base)
    got = ring.get_events(0)
    assert [e.message for e in got] == ["event 0", "event 1", "event 2"]
    assert got[1].metadata is None or isinstance(got[1].metadata, (dict, list))
    assert got[1].truncated is True
    ring.export_events()


def garbage(n: int, seed: int = 1234) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_random_garbage_slot_area(ring):
    with raw_segment(ring.name) as mm:
        start = slot_base(mm, 0)
        mm[start:] = garbage(len(mm) - start)
    assert ring.get_events(0) == []
    assert ring.get_events(5, 2) == []
    ring.get_stats()
    h = ring.health_check()
    # Health reads the writers' books, never the slots (issue 11): memory destroyed behind every
    # writer's back is not an event of the books, so they still say three are retained.
    assert h.event_count == 3
    doc = ring.export_events()
    assert orjson_events(doc) == []
    ring.cleanup_old_events()
    ring.clear_events()  # forget the three records the garbage destroyed
    assert ring.get_events(0) == []
    for _ in range(20):
        ring.record_event(DiagnosticEvent("after_garbage"))  # never crashes, whatever becomes of it
    # ... and is never silently lost: every event recorded since is retained or counted somewhere
    h, acct = ring.health_check(), ring.accounting()
    assert acct.recorded == 20
    assert acct.recorded == h.event_count + acct.overwritten + acct.lost + acct.abandoned + acct.expired
    assert len(ring.get_events(0)) == h.event_count
    # garbage slot words name sequence numbers nobody claimed: writers take those slots over
    assert acct.lost == 0 and h.event_count == min(20, h.max_events)


def orjson_events(doc: bytes) -> list:
    return orjson.loads(doc)["events"]


def test_garbage_peer_table_never_crashes(ring):
    ring.record_peer_connection("p1", "a")
    with raw_segment(ring.name) as mm:
        start = int(read_field(mm, L.HEADER, "peers_off"))
        end = slot_base(mm, 0)
        mm[start:end] = garbage(end - start, seed=99)
    s = ring.get_stats()
    assert s.active_peers >= 0
    ring.health_check()
    ring.export_events()
    for i in range(10):  # inserting into a table full of junk is bounded, never a hang
        ring.record_peer_connection(f"new-{i}", "b")
    ring.get_stats()
    known_events_intact_prefix(ring)


def known_events_intact_prefix(r) -> None:
    got = r.get_events(0)
    assert [(e.event_type, e.message) for e in got[:3]] == [("known", f"event {i}") for i in range(3)]


def test_garbage_counters_in_own_shard_never_crash(ring):
    with raw_segment(ring.name) as mm:
        b = own_shard_base(mm)
        start = b + L.SHARD.fields["journal"][1]  # keep owner, start_time and era: the counters are junk
        mm[start: b + L.SHARD.itemsize] = garbage(b + L.SHARD.itemsize - start, seed=7)
    ring.get_stats()
    h = ring.health_check()
    assert h.writers_alive >= 1
    orjson.loads(ring.export_events())
    ring.record_event(DiagnosticEvent("more", severity=Severity.ERROR))
    ring.record_event(DiagnosticEvent("brand_new_type"))
    ring.get_stats()
    assert [e.event_type for e in ring.get_events(2)] == ["more", "brand_new_type"]


def dead_writer_shard(mm, journal: int) -> None:
    """Make an unused shard look like one held by a process that died mid-record."""
    shards_off = int(read_field(mm, L.HEADER, "shards_off"))
    n = int(read_field(mm, L.HEADER, "max_shards"))
    for i in range(n):
        b = shards_off + i * L.SHARD.itemsize
        if int(read_field(mm, L.SHARD, "owner", b)) & 0xFF == L.SH_FREE:
            write_field(mm, L.SHARD, "journal", journal, b)
            write_field(mm, L.SHARD, "owner", (NO_SUCH_PID << 8) | L.SH_ACTIVE, b)
            return
    raise AssertionError("no free shard")


NO_SUCH_PID = (1 << 31) - 5  # above any Linux pid_max


def test_corrupt_dead_writer_journal_never_raises(ring):
    with raw_segment(ring.name) as mm:
        dead_writer_shard(mm, ((1 << (63 - L.J_PHASE_BITS)) << L.J_PHASE_BITS) | L.PH_OWNED)
    h = ring.health_check()
    assert h.writers_dead == 1
    assert h.status == "warning"


def test_corrupt_dead_writer_journal_other_calls_survive(ring):
    with raw_segment(ring.name) as mm:
        dead_writer_shard(mm, ((1 << (63 - L.J_PHASE_BITS)) << L.J_PHASE_BITS) | L.PH_OWNED)
    known_events_intact(ring)
    ring.get_stats()


# -- the segment file ------------------------------------------------------------------------------


def test_segment_mode_is_0600(rec):
    assert stat.S_IMODE(os.stat(shm_path(rec.name)).st_mode) == 0o600
    assert os.stat(shm_path(rec.name)).st_uid == os.getuid()


def test_segment_mode_is_0600_whatever_the_umask(make_recorder):
    old = os.umask(0)
    try:
        r = make_recorder(4)
    finally:
        os.umask(old)
    assert os.stat(shm_path(r.name)).st_mode & 0o777 == 0o600


def test_segment_size_matches_layout(make_recorder):
    r = make_recorder(config=RecorderConfig(max_events=100, max_writers=4, max_peers=10, name=unique_name()))
    size = os.stat(shm_path(r.name)).st_size
    assert size == L.segment_offsets(100, 4, 10)["total_size"]
    with raw_segment(r.name) as mm:
        assert bytes(read_field(mm, L.HEADER, "magic")) == L.MAGIC.rstrip(b"\x00")
        assert int(read_field(mm, L.HEADER, "version")) == L.VERSION
        assert int(read_field(mm, L.HEADER, "capacity")) == 100
        assert int(read_field(mm, L.HEADER, "header_crc")) == L.header_crc(mm[: L.HEADER_STATIC_SIZE])


def test_create_with_name_in_use(make_recorder, foreign_segment):
    r = make_recorder(4)
    with pytest.raises(RingExistsError) as info:
        Recorder(max_events=4, name=r.name)
    assert isinstance(info.value, ShmDiagError) and isinstance(info.value, FileExistsError)
    # a foreign segment's name too, and the foreign segment is left alone
    shm = foreign_segment(4096, fill=b"\xab")
    with pytest.raises(RingExistsError):
        Recorder.with_config(RecorderConfig(name=shm.name))
    assert bytes(shm.buf[:]) == b"\xab" * 4096
    assert os.path.exists(shm_path(r.name))


def test_segment_removed_after_close(make_recorder):
    r = make_recorder(4)
    path = shm_path(r.name)
    assert os.path.exists(path)
    r.close()
    assert not os.path.exists(path)
    with pytest.raises(RingNotFoundError):
        Recorder.attach(r.name)


def test_close_survives_segment_already_unlinked(make_recorder):
    r = make_recorder(4)
    os.unlink(shm_path(r.name))
    r.record_event(DiagnosticEvent("still mapped"))
    assert [e.event_type for e in r.get_events()] == ["still mapped"]
    r.close()
    assert r.closed
