"""The binary layout of a shmdiag segment: the one definition both paths derive from.

The numpy reader views the segment through the dtypes below; the native writer
(``core/_native.c``) receives the same field offsets from :func:`native_layout`. Changing a field
here changes both, and bumps :data:`VERSION` so older readers refuse the new segment.

Segment::

    [ header: 4096 bytes ][ shards: max_shards x SHARD ][ peers: 2 max_peers x PEER ][ ops: OP_SLOTS x OP ]
    [ slots: capacity x SLOT ]

Slot word ``w`` (first u64 of every slot), published with a release store::

    w = ((seq + 1) << 5) | (severity << 2) | state        w == 0: never written

so the reader finds sequence, severity and state of every record from one array of words.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import TypeVar, cast

import numpy as np

MAGIC = b"SHMDIAG\x00"
VERSION = 11
HEADER_SIZE = 4096
SLOT_SIZE = 240
CACHE_LINE = 64

# The head word carries the clear generation with the sequence number, so the one fetch_add
# that claims a sequence number also tells the writer which era (which clear) it belongs to.
SEQ_BITS = 48
SEQ_MASK = (1 << SEQ_BITS) - 1
U64_MAX = (1 << 64) - 1  # counters are u64 words: the mask their arithmetic wraps with, as in C, and the
                         # bound a sum of them saturates at, so no figure exceeds what JSON consumers read
BASE_SLOTS = 16

# Runs of sequence numbers: a writer claims several sequence numbers with one fetch_add and
# fills their slots alone, so two cores do not write interleaved neighbouring records (17
# slots share a page). A run is as long as the events its process recorded in the last
# RUN_TTL_NS (a power of two, at most run_max(capacity)), so a slow writer claims one seq at a
# time and leaves no unused ones behind. A run is used for at most RUN_TTL_NS after it was
# claimed; the writer checks that after taking a slot, so a reader that finds a sequence number
# unwritten later than that, below a published one, knows it never will be (see core/follow.py).
# The unused rest of a run given up goes back to the head when nobody claimed after it, else it
# is counted in the shard's "unused" (drop_run in core/_native.c).
RUN_MAX = 64
RUN_TTL_NS = 10_000_000
RUN_NONE, RUN_CLAIMING = 0, 1  # shard word "run": none, one being claimed, or
RUN_LEN_BITS = 8               # ((first seq + 2) << RUN_LEN_BITS) | length


def run_max(capacity: int) -> int:
    """The longest run: RUN_MAX on rings of 64Ki events and more, a power of two no larger
    than capacity / 1024 below that (1, one seq per claim, on rings under 2048 events)."""
    k = 1
    while k < RUN_MAX and k * 2 * 1024 <= capacity:
        k *= 2
    return k


# Slot word states. ST_CONT: a continuation slot (see CONT below), published: never an event of its
# own, so everything that keeps ST_COMMITTED words counts and reads one event per event.
ST_COMMITTED, ST_BUSY, ST_DELETED, ST_CONT = 0, 1, 2, 3
# The severity bits of a continuation slot's word, busy (being written) or published: no
# severity (those are 0..4), so a reader tells a continuation in flight from an event in flight.
SEV_CONT = 7
W_STATE_BITS, W_SEV_BITS = 2, 3
W_SEQ_SHIFT = W_STATE_BITS + W_SEV_BITS

# Writer journal (per shard): ((seq + 1) << 3) | phase; 0 when idle. PH_EXTRAS: the event's
# outcome is decided (published, or lost) and the writer is applying its peer and latency adds,
# "jstep" of them done so far, as described by the "jx_*" words (see account_extras in _native.c).
J_PHASE_BITS = 3
PH_CLAIMED, PH_OWNED, PH_EXTRAS, PH_COUNTING = 1, 2, 3, 4
OUT_CLEAN, OUT_OVERWROTE, OUT_LOST = 0, 1, 2

# Shard ownership word: (pid << 8) | state (owner_make / owner_pid / owner_state below).
SH_FREE, SH_ACTIVE, SH_EXITED, SH_DEAD, SH_REAPING = 0, 1, 2, 3, 4

# Record kinds and record flags: helpers store typed fields and their text is rendered at read
# time. What each kind stores and how it reads is the table in core/kinds.py; the codes, the
# flags and BUILTIN_TYPES below are that table's.
from shmdiag.core.kinds import (  # noqa: E402, F401  (re-exported: the layout's names for them)
    BUILTIN_TYPES,
    F_CONTINUED,
    F_HAS_ERROR,
    F_HAS_METADATA,
    F_LIFE_CONNECT,
    F_LIFE_DISCONNECT,
    F_OUTBOUND,
    F_TRUNCATED,
    KIND_CONNECT,
    KIND_CONTINUATION,
    KIND_DISCONNECT,
    KIND_ERROR,
    KIND_EVENT,
    KIND_LATENCY,
    KIND_MAX,
    KIND_MESSAGE,
)

# Text area of a slot: event_type and peer_id have caps of their own; the three free fields
# (metadata JSON, error, message for record_event) share what is left, in that order.
TEXT_SIZE = 196
TYPE_CAP = 32
PEER_CAP = 64

# Events longer than one slot. An event of n slots takes n consecutive sequence numbers of its
# writer's run: its first slot, an ordinary record (flags |= F_CONTINUED) holding every field's
# first part, then n - 1 continuation slots (struct CONT: word state ST_CONT, kind
# KIND_CONTINUATION) holding the rest of the three free fields, one after the other. The free
# fields together keep up to TEXT_MAX bytes; beyond that, and when the ring is too small for
# EVENT_SLOTS_MAX slots, the fields a kind's message is made of keep priority over its error,
# and the error over the rest (kinds.Kind.text_order), and the event is marked truncated.
TEXT_MAX = 6144
EVENT_SLOTS_MAX = 32
CONT_TEXT = 200


def event_slots_max(capacity: int) -> int:
    """Slots one event may take on a ring of ``capacity``: EVENT_SLOTS_MAX, fewer on rings under
    512 events (a sixteenth of the ring), so one event never laps a small ring."""
    return max(1, min(EVENT_SLOTS_MAX, capacity // 16))


def text_budget(capacity: int, type_len: int, peer_len: int) -> int:
    """Bytes the three free fields of an event keep together, when its event type and peer id
    take ``type_len`` and ``peer_len`` bytes (the writer's rule: core/_native.c fit_text)."""
    return min(TEXT_MAX, TEXT_SIZE - type_len - peer_len + (event_slots_max(capacity) - 1) * CONT_TEXT)


# Event types each shard counts individually; the last entry collects the rest.
TYPE_SLOTS = 64
TYPE_NAME_SIZE = 32
OTHER_TYPE = "(other)"  # BUILTIN_TYPES (the kinds' own types) come first, from core/kinds.py

# Message types, named once for the whole ring (header registry), so each peer entry can count
# bytes per message type as Bitcoin Core's getpeerinfo does; the last entry collects the rest.
MSG_TYPES = 47
MSG_NAME_SIZE = 16
OTHER_MSG = "*other*"

# Peer table: 2 x max_peers entries. A peer's entry is one of its PEER_CANDIDATES candidates: two
# windows of PEER_WINDOW consecutive entries, at two positions given by its key's hash. A new peer
# takes an empty candidate or recycles the one whose peer left longest ago (see peer_find in
# _native.c); entries of connected peers are never recycled.
PEER_TABLE_FACTOR = 2
PEER_WINDOW = 16
PEER_CANDIDATES = 2 * PEER_WINDOW
ADDR_CAP = 72
# What recycled entries had counted (of the current clear generation): header words "recycled".
RECYCLED_FIELDS = ("msgs_sent", "msgs_recv", "bytes_sent", "bytes_recv", "errors", "events", "ping_count",
                   "ping_sum_ns", "peers")  # "peers": how many entries were recycled

# Timed operations (spans, record_latency): a log-bucketed histogram per operation, as in
# DDSketch. Bucket i >= 1 holds durations d (ns) with gamma**(i-1) < d <= gamma**i; reporting
# 2 gamma**i / (gamma + 1) is within LATENCY_ALPHA of every value in the bucket.
OP_SLOTS = 32
OP_NAME_SIZE = 32
OP_BUCKETS = 1536
LATENCY_ALPHA = 0.01
LATENCY_GAMMA = (1 + LATENCY_ALPHA) / (1 - LATENCY_ALPHA)
OTHER_OP = "(other)"
PING_OPS = ("ping", "pong")  # latency of these operations, for a peer, is that peer's ping time

HEADER_FLAG_METRICS = 1
HEADER_FLAG_HEALTH = 2
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EXPORT_FORMATS = ("json", "ndjson")


Word = TypeVar("Word", int, np.ndarray)  # one u64 word, or an array of them (see the word helpers)


def _struct(itemsize: int, *fields: tuple) -> np.dtype:
    """A little-endian struct with explicit offsets, like a C struct with its padding.
    Each field is (name, format, offset) or (name, format, shape, offset)."""
    names = [f[0] for f in fields]
    formats = [(f[1], f[2]) if len(f) == 4 else f[1] for f in fields]
    offsets = [f[-1] for f in fields]
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize})


HEADER = _struct(
    HEADER_SIZE,
    # static part, covered by header_crc
    ("magic", "S8", 0),
    ("version", "<u4", 8),
    ("header_size", "<u4", 12),
    ("slot_size", "<u4", 16),
    ("shard_size", "<u4", 20),
    ("peer_size", "<u4", 24),
    ("text_size", "<u4", 28),
    ("capacity", "<u8", 32),
    ("max_shards", "<u4", 40),
    ("max_peers", "<u4", 44),
    ("shards_off", "<u8", 48),
    ("peers_off", "<u8", 56),
    ("slots_off", "<u8", 64),
    ("total_size", "<u8", 72),
    ("created_ns", "<i8", 80),
    ("creator_pid", "<u4", 88),
    ("flags", "<u4", 92),
    ("cleanup_interval", "<f8", 96),
    ("retention_period", "<f8", 104),
    ("log_level", "<u1", 112),
    ("export_format", "<u1", 113),
    ("ops_off", "<u8", 116),
    ("header_crc", "<u4", 124),
    # live words, each hot one on a cache line of its own
    ("head", "<u8", 256),                 # (generation << SEQ_BITS) | next sequence number
    ("base_of", "<u8", (BASE_SLOTS,), 320),  # first sequence number of generation g, at g % BASE_SLOTS
    ("peers_used", "<u8", 448),             # entries of the peer table ever used (recycled ones stay used)
    ("clear_lock", "<u8", 512),             # pid of the process clearing, or 0: clears are serialised
    ("peers_untracked", "<u8", 576),        # connects of peers that found the peer table full
    ("peer_events_untracked", "<u8", 584),  # events of any kind for peers not in the table
    ("recycled_era", "<u8", 640),            # base + 1 of the clear generation "recycled" counts, as a peer's era
    ("recycled", "<u8", (9,), 648),          # RECYCLED_FIELDS: what recycled peer entries had counted
    ("collector", "<u8", 896),              # the running collector, as clear_lock (pid, start), or 0: none
    ("msg_state", "<u8", (MSG_TYPES,), 1024),  # 0 empty, 1 being named, (hash << 8) | (len << 2) | 2
    ("msg_name", f"S{MSG_NAME_SIZE}", (MSG_TYPES,), 1408),
)
HEADER_STATIC_SIZE = 124  # bytes covered by header_crc

SHARD = _struct(
    4480,
    ("owner", "<u8", 0),           # (pid << 8) | SH_* state, changed by CAS only
    ("start_time", "<u8", 8),      # owner's process start time (ms), to tell a reused pid
    ("base", "<u8", 16),           # era (header base) these counters belong to
    ("journal", "<u8", 24),
    ("jmeta", "<u8", 32),          # type | sev << 8 | flags << 16 | outcome << 24
    ("jts", "<i8", 40),
    ("jprev", "<u8", 48),          # slot word expected by the last CAS attempt
    ("jbefore", "<u8", (4,), 56),  # recorded, outcome counter, severity, type: values before +1
    ("recorded", "<u8", 88),
    ("overwritten", "<u8", 96),
    ("lost", "<u8", 104),
    ("abandoned", "<u8", 112),
    ("expired", "<u8", 120),
    ("first_ts", "<i8", 128),
    ("last_ts", "<i8", 136),
    ("sev", "<u8", (5,), 144),
    ("ntypes", "<u8", 184),
    ("type_count", "<u8", (TYPE_SLOTS,), 192),
    ("type_len", "<u1", (TYPE_SLOTS,), 704),
    ("type_name", f"S{TYPE_NAME_SIZE}", (TYPE_SLOTS,), 768),
    ("run", "<u8", 2816),          # the run of sequence numbers in use (RUN_*)
    ("run_t0", "<u8", 2824),       # CLOCK_MONOTONIC_COARSE ns, read before that run was claimed
    ("unused", "<u8", 2832),       # seqs of this era's runs abandoned unused and not given back
    ("jstep", "<u8", 2840),        # extras journal: how many of the event's adds are done
    ("jx_peer", "<u8", 2848),      # byte offset of the event's peer entry, or 0
    ("jx_bank", "<u8", 2856),      # byte offset of the event's latency bank, or 0
    ("jx_value", "<u8", 2864),     # the event's value (bytes, duration ns)
    ("jx_info", "<u8", 2872),      # msg type | bucket << 8 | JX_* << 24
    # Messages and their bytes per message type (the header registry's index) and direction
    # (MSG_DIRECTIONS), of every event of kind message this writer recorded in this era, its peer
    # tracked or not: counted with the shard's other counters in the counting phase (old values
    # in "jbefore_msg": count, bytes), so exact, never folded away when a peer entry is recycled.
    ("jbefore_msg", "<u8", (2,), 2880),
    # Row + 1 of the peer entry whose pin this writer holds, or 0: stored just after the pin CAS
    # and cleared just before the unpin, so a reaper releases a dead writer's pin exactly when it
    # still holds it (see peer_find and settle_pin in _native.c; a boundary either side of the
    # window leaves the pin held, never releases it twice).
    ("jpin", "<u8", 2896),
    # Events this writer has taken and not yet written (Recorder.set_batch): messages, latency
    # events. A reaper counts a dead writer's as recorded and lost (severity DEBUG, their type):
    # they were in its private memory. Not an era counter: live, never zeroed by a clear.
    ("staged", "<u8", (2,), 2904),
    ("msg_count", "<u8", (2, MSG_TYPES), 2944),
    ("msg_bytes", "<u8", (2, MSG_TYPES), 2944 + 16 * MSG_TYPES),
)
MSG_DIRECTIONS = ("inbound", "outbound")  # index: whether the message's flags say F_OUTBOUND

# The peer table's dense index: per entry, the words every lookup and the recycling scan read,
# kept apart from the entries, so a key's PEER_CANDIDATES candidates are two runs of PEER_WINDOW
# consecutive 24-byte words (about 14 cache lines in 2-4 pages) rather than the first lines of 32
# entries 1 KiB apart (32 lines in ~10 pages). Row i of PEER_INDEX belongs to row i of PEER.
PEER_INDEX = _struct(
    24,
    ("key_state", "<u8", 0),  # key_make(): 0 empty, 1 being (re)written, (hash << 16) | (pins << 2) | 2 ready
    ("life", "<u8", 8),       # life_make(): seq, writer, died and connected of the latest lifecycle event
    ("idle", "<u8", 16),      # seq + 1 of the event since which it is not connected: recycling order
)

# An entry: what every event of the peer touches first (its generation, activity and traffic
# counters, the key's length), then the key, then the rest. A message touches 3 of its lines
# (the first, the key, its type's per-message word) and the index word.
PEER = _struct(
    1024,
    ("era", "<u8", 0),             # base + 1 of the clear generation the counters below belong to
    ("last_activity", "<i8", 8),   # ns, of the latest event of any kind
    ("events", "<u8", 16),
    ("msgs_recv", "<u8", 24),
    ("bytes_recv", "<u8", 32),
    ("msgs_sent", "<u8", 40),
    ("bytes_sent", "<u8", 48),
    ("key_len", "<u1", 56),
    ("addr_len", "<u1", 57),
    ("key", f"S{PEER_CAP}", 64),
    ("connected_at", "<i8", 128),  # ns, of the latest connect
    ("errors", "<u8", 136),        # events at ERROR or CRITICAL
    ("ping_count", "<u8", 144),
    ("ping_sum_ns", "<u8", 152),
    ("ping_last_ns", "<u8", 160),
    ("ping_min_ns", "<u8", 168),
    ("addr", f"S{ADDR_CAP}", 176),
    ("bytes_sent_per_msg", "<u8", (MSG_TYPES,), 248),
    ("bytes_recv_per_msg", "<u8", (MSG_TYPES,), 248 + 8 * MSG_TYPES),
)
PEER_COUNTERS = ("msgs_sent", "msgs_recv", "bytes_sent", "bytes_recv", "errors", "ping_count", "ping_sum_ns",
                 "ping_last_ns", "ping_min_ns", "events")  # zeroed when a clear starts a new generation

OP_BANK = _struct(
    64 + 8 * OP_BUCKETS,
    ("count", "<u8", 0),     # durations in the histogram
    ("errors", "<u8", 8),    # spans that raised: counted, not timed
    ("sum_ns", "<u8", 16),
    ("max_ns", "<u8", 24),
    ("gen", "<u8", 32),      # the clear generation the bank belongs to (BANK_ZEROING while zeroed)
    ("buckets", "<u8", (OP_BUCKETS,), 64),
)
BANK_ZEROING = (1 << 64) - 1

# Two banks per operation, used by alternate clear generations: the clearer marks the next
# generation's bank BANK_ZEROING, zeroes it and names its generation before that generation
# starts. A writer adds a sample only to a bank that names the sample's generation, so one
# stalled across two clears does not add into a bank that now belongs to a newer one; readers
# take a bank only when it names the current generation.
OP = _struct(
    64 + 2 * OP_BANK.itemsize,
    ("name_state", "<u8", 0),  # as msg_state
    ("name", f"S{OP_NAME_SIZE}", 16),
    ("banks", OP_BANK, (2,), 64),
)

# 240 bytes, not 256: with the fixed tables a ring then takes under 256 bytes per event. Slots
# are not cache-line aligned; each writer fills a run of them (see RUN_MAX), so that costs
# nothing measurable. The sequence number is the slot word's alone: a reader checks the word
# before and after copying, and the copy's own, so a payload never passes for another seq's.
SLOT = _struct(
    SLOT_SIZE,
    ("w", "<u8", 0),
    ("ts_ns", "<i8", 8),
    ("value", "<i8", 16),
    ("checksum", "<u8", 24),
    ("lens", "<u1", (5,), 32),   # event_type, peer_id, f1, f2, f3: one word with the next three
    ("severity", "<u1", 37),
    ("kind", "<u1", 38),
    ("flags", "<u1", 39),
    ("pid", "<u4", 40),
    ("text", "<u1", (TEXT_SIZE,), 44),
)
assert SLOT.itemsize == SLOT_SIZE and HEADER.itemsize == HEADER_SIZE

# A continuation slot (word state ST_CONT, kind KIND_CONTINUATION at the SLOT's kind offset). The
# continuations of an event carry f1[a1:], f2[a2:], f3[a3:] (a_i: the first slot's lens), in that
# order, CONT_TEXT bytes each; "more" says how many bytes of each field they carry. A reader takes
# them only when all ``count`` of them hold their own sequence numbers (first + index), name the
# first slot's, agree on count and more, and pass the checksum (same keys as SLOT).
CONT = _struct(
    SLOT_SIZE,
    ("w", "<u8", 0),
    ("first", "<u8", 8),          # sequence number of the event's first slot
    ("more", "<u2", (3,), 16),    # bytes of f1, f2, f3 in the continuations (the same in each)
    ("index", "<u1", 22),         # 1..count
    ("count", "<u1", 23),         # continuation slots of the event
    ("checksum", "<u8", 24),
    ("kind", "<u1", 38),          # KIND_CONTINUATION, where a SLOT has its kind
    ("text", "<u1", (CONT_TEXT,), 40),
)


def fields(dt: np.dtype) -> dict[str, tuple[np.dtype, int]]:
    """``{name: (dtype, offset)}`` of a struct above."""
    assert dt.fields is not None, "not a struct"
    return {name: (spec[0], int(spec[1])) for name, spec in dt.fields.items()}


@functools.cache
def offset(dt: np.dtype, field: str) -> int:
    """The byte offset of ``field`` in the struct ``dt`` (cached: readers ask for header words
    on every call)."""
    return fields(dt)[field][1]


def check_no_overlap(dt: np.dtype) -> None:
    """Refuse a struct whose fields share bytes: offsets are written by hand above, and two
    fields on one word corrupt each other silently (layout version 4 had base_of[8] on top of
    peers_untracked). Run at import for every table."""
    spans = sorted((off, off + sub.itemsize, name) for name, (sub, off) in fields(dt).items())
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        if start < end:
            raise AssertionError(f"layout: field {b!r} at {start} overlaps {a!r}, which ends at {end}")
    if spans and spans[-1][1] > dt.itemsize:
        raise AssertionError(f"layout: field {spans[-1][2]!r} ends at {spans[-1][1]}, "
                             f"past the {dt.itemsize}-byte struct")


# A reader's copy of a peer row: the entry, then its index words (core/snapshot.py, peer_rows).
PEER_ROW = _struct(PEER.itemsize + PEER_INDEX.itemsize,
                   *((n, sub, off) for n, (sub, off) in fields(PEER).items()),
                   *((n, sub, PEER.itemsize + off) for n, (sub, off) in fields(PEER_INDEX).items()))

assert offset(CONT, "kind") == offset(SLOT, "kind") and offset(CONT, "checksum") == offset(SLOT, "checksum")
for _dt in (HEADER, SHARD, PEER_INDEX, PEER, PEER_ROW, OP_BANK, OP, SLOT, CONT):
    check_no_overlap(_dt)

# Checksum: sum over the slot's u64 words of word * key, mod 2**64, leaving out the slot word
# and the checksum itself. Odd keys make any single changed word change the sum.
_NWORDS = SLOT_SIZE // 8
CHECKSUM_KEYS = (np.arange(1, _NWORDS + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
CHECKSUM_KEYS[offset(SLOT, "w") // 8] = 0
CHECKSUM_KEYS[offset(SLOT, "checksum") // 8] = 0


def w_seq(w: Word) -> Word:
    """Sequence number held by slot words (valid only where w != 0)."""
    return (w >> W_SEQ_SHIFT) - 1


def w_state(w):
    return w & ((1 << W_STATE_BITS) - 1)


def w_severity(w):
    return (w >> W_STATE_BITS) & ((1 << W_SEV_BITS) - 1)


def w_make(seq: int, severity: int, state: int) -> int:
    return ((seq + 1) << W_SEQ_SHIFT) | (severity << W_STATE_BITS) | state


def run_make(first: int, n: int) -> int:
    """The shard word for a run of ``n`` sequence numbers from ``first`` (as claim_run stores it)."""
    return ((first + 2) << RUN_LEN_BITS) | n


def run_span(run):
    """(first, end) of the runs that shard words hold (words above RUN_CLAIMING only)."""
    return (run >> RUN_LEN_BITS) - 2, (run >> RUN_LEN_BITS) - 2 + (run & ((1 << RUN_LEN_BITS) - 1))


def j_make(seq: int, phase: int) -> int:
    return ((seq + 1) << J_PHASE_BITS) | phase


def j_seq(j: Word) -> Word:
    """Sequence number of a writer's journal word (valid only where j != 0)."""
    return (j >> J_PHASE_BITS) - 1


def j_phase(j: Word) -> Word:
    return j & ((1 << J_PHASE_BITS) - 1)


JMETA_BITS = 8  # shard word "jmeta": type | severity << 8 | flags << 16 | outcome << 24
# ... | ncont << 32 | stage << 40 | overwrote << 48 | msg << 56: msg is the message type index + 1
# of an event of kind message (0 for other kinds), which the reaper counts as the writer would;
# ncont, stage and overwrote are for events of several slots (see write() in
# core/_native.c): the continuation slots planned (or, at STAGE_DONE, taken); the continuation
# whose CAS may be under way (its expected word in "jprev"), 0 while the first slot's is, or
# STAGE_DONE once all are taken; and how many live events the slots taken so far replaced. The
# writer stores the outcome with stage STAGE_DONE just before the journal moves to PH_EXTRAS, so
# from then on (under OWNED too, if it dies in between) "overwrote" is final for every event (0 or
# 1 for an event of one slot) and no stage names a CAS whose jprev is still to be counted.
STAGE_DONE = 255


def jmeta_make(tidx: int, sev: int, flags: int, outcome: int = OUT_CLEAN, ncont: int = 0, stage: int = 0,
               overwrote: int = 0, msg: int = -1) -> int:
    return (tidx | (sev << JMETA_BITS) | (flags << 2 * JMETA_BITS) | (outcome << 3 * JMETA_BITS)
            | (ncont << 4 * JMETA_BITS) | (stage << 5 * JMETA_BITS) | (overwrote << 6 * JMETA_BITS)
            | ((msg + 1) << 7 * JMETA_BITS))


def jmeta_msg(meta: int) -> int:
    """The message type index of a journal's "jmeta" word, or -1: not a message (see JMETA_BITS)."""
    return ((meta >> 7 * JMETA_BITS) & ((1 << JMETA_BITS) - 1)) - 1


def jmeta_conts(meta: int) -> tuple[int, int, int]:
    """(ncont, stage, overwrote) of a journal's "jmeta" word (see JMETA_BITS)."""
    m = (1 << JMETA_BITS) - 1
    return (meta >> 4 * JMETA_BITS) & m, (meta >> 5 * JMETA_BITS) & m, (meta >> 6 * JMETA_BITS) & m


def jmeta_fields(meta: int) -> tuple[int, int, int, int]:
    """(type index, severity, flags, outcome) of a journal's "jmeta" word, as the writer stored them."""
    m = (1 << JMETA_BITS) - 1
    return meta & m, (meta >> JMETA_BITS) & m, (meta >> 2 * JMETA_BITS) & m, (meta >> 3 * JMETA_BITS) & m


# -- the other words shared between processes ---------------------------------------------------
# The decoders take a word (an int) or a numpy array of words and answer element-wise, so a view
# decodes a whole copied column at once; a predicate gives a bool, or an array of them.

# The head word: (generation << SEQ_BITS) | next sequence number. Each clear starts the next
# generation; timed operations alternate between two histogram banks by generation (see OP).
def head_make(gen: int, seq: int) -> int:
    return (gen << SEQ_BITS) | seq


def head_seq(h: Word) -> Word:
    return h & SEQ_MASK


def head_gen(h: Word) -> Word:
    return h >> SEQ_BITS


def op_bank(gen: Word) -> Word:
    """The bank of OP's two that generation ``gen`` adds its durations to."""
    return gen & 1


# Shard ownership (shard word "owner"): (pid << 8) | SH_* state, changed by CAS only.
OWNER_STATE_BITS = 8


def owner_make(pid: int, state: int) -> int:
    return (pid << OWNER_STATE_BITS) | state


def owner_pid(w: Word) -> Word:
    return w >> OWNER_STATE_BITS


def owner_state(w: Word) -> Word:
    return w & ((1 << OWNER_STATE_BITS) - 1)


# Registries named once per ring (header "msg_state", the ops' "name_state") and the peer table's
# "key_state" share a tag in the two low bits: TAG_EMPTY (the word is 0), TAG_WRITING (the word
# is 1: a name or key being written) or TAG_READY, published with a release store after the bytes:
#   registry word  (hash << 8) | (len << 2) | TAG_READY     (see registry_find in _native.c)
#   peer key word  (key_hash(key) << 16) | (pins << 2) | TAG_READY  (see key_make; the length is key_len)
TAG_BITS = 2
TAG_EMPTY, TAG_WRITING, TAG_READY = 0, 1, 2
NAME_LEN_BITS = 6  # names of at most 63 bytes


def key_hash(raw: bytes) -> int:
    """The hash of peer keys and registry names, as the native writer computes it (key_hash in
    _native.c): 8-byte little-endian words, one multiply each, then murmur3's finaliser."""
    m = (1 << 64) - 1
    h = 0x9E3779B97F4A7C15 ^ len(raw)
    full = len(raw) // 8 * 8
    for i in range(0, full, 8):
        h = ((h ^ int.from_bytes(raw[i:i + 8], "little")) * 0xFF51AFD7ED558CCD) & m
        h ^= h >> 32
    h = ((h ^ int.from_bytes(raw[full:], "little")) * 0xFF51AFD7ED558CCD) & m
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & m
    return h ^ (h >> 33)


def name_make(name_hash: int, length: int) -> int:
    """The registry word of a ready name (as registry_find stores it; the hash's top byte is dropped)."""
    return ((name_hash & ((1 << 56) - 1)) << 8) | (length << TAG_BITS) | TAG_READY


def name_ready(w: Word) -> Word:
    """Whether registry words name a complete entry (the name bytes beside them are published)."""
    return cast(Word, (w & ((1 << TAG_BITS) - 1)) == TAG_READY)


def name_len(w: Word) -> Word:
    """Length in bytes of the name of a ready registry word."""
    return (w >> TAG_BITS) & ((1 << NAME_LEN_BITS) - 1)


KEY_PIN_SHIFT, KEY_PIN_BITS, KEY_HASH_SHIFT = 2, 14, 16


def key_make(key_hash: int, pins: int = 0) -> int:
    """A ready peer key word: the low 48 bits of the key's hash, and how many writers hold the
    entry pinned (a pinned entry is never recycled; see peer_find in _native.c)."""
    return ((key_hash << KEY_HASH_SHIFT) | (pins << KEY_PIN_SHIFT) | TAG_READY) & ((1 << 64) - 1)


def key_ready(w: Word) -> Word:
    """Whether peer key_state words publish their entry's key (same tag as registry words)."""
    return name_ready(w)


def key_pins(w: Word) -> Word:
    return (w >> KEY_PIN_SHIFT) & ((1 << KEY_PIN_BITS) - 1)


# A peer's lifecycle (peer word "life"), of its latest connect or disconnect, raised by CAS-max on
# the sequence number (the high bits), so the highest word is the latest event; 0: none yet.
#   ((seq + 1) << 16) | ((writer shard + 1) << 2) | (died << 1) | connected
# "died": the reaper of the writer that recorded the connect took the peer down (core/shards.py).
LIFE_SEQ_SHIFT, LIFE_WRITER_SHIFT, LIFE_WRITER_BITS = 16, 2, 14
LIFE_CONNECTED, LIFE_DIED = 1, 2


def life_make(seq: int, connected: bool, writer: int = -1, died: bool = False) -> int:
    return (((seq + 1) << LIFE_SEQ_SHIFT) | ((writer + 1) << LIFE_WRITER_SHIFT) | (LIFE_DIED if died else 0)
            | int(connected))


def life_connected(w: Word) -> Word:
    """Whether life words say connected (False for 0: no lifecycle event)."""
    return cast(Word, (w & LIFE_CONNECTED) == LIFE_CONNECTED)


def life_died(w: Word) -> Word:
    """Whether life words say the peer was taken down because its writer died."""
    return cast(Word, (w & LIFE_DIED) == LIFE_DIED)


def life_writer(w: Word) -> Word:
    """Shard index + 1 of the writer that recorded the lifecycle event (0: unknown)."""
    return (w >> LIFE_WRITER_SHIFT) & ((1 << LIFE_WRITER_BITS) - 1)


def life_seq(w: Word) -> Word:
    """Sequence number of the lifecycle event (valid only where w != 0)."""
    return (w >> LIFE_SEQ_SHIFT) - 1


def life_writer_died(w: int) -> int:
    """The life word of a connected peer taken down because its writer died (same event, same seq)."""
    return (w & ~LIFE_CONNECTED) | LIFE_DIED


# The clear lock (header word "clear_lock"): 0 when free, else the clearer's pid in the high half
# and the low CLEAR_START_BITS of its start time (ms) in the low half (see core/procs.py).
CLEAR_START_BITS = 32


def clear_make(pid: int, start_ms: int) -> int:
    return (pid << CLEAR_START_BITS) | (start_ms & ((1 << CLEAR_START_BITS) - 1))


def clear_pid(w: Word) -> Word:
    return w >> CLEAR_START_BITS


def clear_start(w: Word) -> Word:
    """The low CLEAR_START_BITS bits of the holder's start time (ms)."""
    return w & ((1 << CLEAR_START_BITS) - 1)


# The collector (header word "collector"): 0 when the ring has none, else the word of the process
# running its collector, made and read with the clear lock's helpers above (pid, low bits of its
# start time). Set by the collector when it starts, cleared when it stops cleanly (core/owners.py),
# so a word naming a dead process means the collector was killed.


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def segment_offsets(capacity: int, max_shards: int, max_peers: int) -> dict[str, int]:
    """Where each region starts, and the segment's total size, for a ring of this shape."""
    shards_off = HEADER_SIZE
    pindex_off = _align(shards_off + max_shards * SHARD.itemsize, CACHE_LINE)  # as pindex_offset
    peers_off = _align(pindex_off + PEER_TABLE_FACTOR * max_peers * PEER_INDEX.itemsize, CACHE_LINE)
    ops_off = _align(peers_off + PEER_TABLE_FACTOR * max_peers * PEER.itemsize, CACHE_LINE)
    slots_off = _align(ops_off + OP_SLOTS * OP.itemsize, 4096)
    return {"shards_off": shards_off, "peers_off": peers_off, "ops_off": ops_off, "slots_off": slots_off,
            "total_size": slots_off + capacity * SLOT_SIZE}  # the peer index: pindex_offset(header)


def pindex_offset(header: np.void) -> int:
    """Where the peer index starts: right after the shards (not a header field of its own)."""
    return _align(int(header["shards_off"]) + int(header["max_shards"]) * SHARD.itemsize, CACHE_LINE)


def latency_bucket(ns: int) -> int:
    """The histogram bucket of a duration; the native writer computes the same (tests check)."""
    if ns <= 1:
        return 0
    return min(OP_BUCKETS - 1, max(1, math.ceil(math.log(ns) / math.log(LATENCY_GAMMA))))


def latency_value(bucket: int) -> float:
    """The duration (ns) a bucket stands for: within LATENCY_ALPHA of all it holds."""
    if bucket <= 0:
        return 0.0
    return 2 * LATENCY_GAMMA**bucket / (LATENCY_GAMMA + 1)


def header_crc(raw: bytes) -> int:
    return zlib.crc32(raw[:HEADER_STATIC_SIZE])


def _text_order() -> bytes:
    """Per kind code (256 of them), the order in which the writer gives room to f1, f2, f3 (as
    slot text indices 2..4): kinds.Kind.text_order; unknown codes as record_event's kind."""
    from shmdiag.core.kinds import BY_CODE, EVENT
    out = bytearray()
    for code in range(256):
        out += bytes(BY_CODE.get(code, EVENT).text_order)
    return bytes(out)


def native_layout(header: np.void) -> dict[str, object]:
    """Every offset and constant the native writer needs, derived from the dtypes above."""
    out: dict[str, object] = {}
    for prefix, dt in (("hdr_", HEADER), ("slot_", SLOT), ("shard_", SHARD), ("peer_", PEER), ("pidx_", PEER_INDEX),
                       ("op_", OP), ("bank_", OP_BANK)):
        for name, (_, off) in fields(dt).items():
            out[prefix + name] = off
    out.update(
        capacity=int(header["capacity"]), slot_size=SLOT_SIZE, slots_off=int(header["slots_off"]),
        shards_off=int(header["shards_off"]), shard_size=SHARD.itemsize, max_shards=int(header["max_shards"]),
        peers_off=int(header["peers_off"]), peer_size=PEER.itemsize, pidx_size=PEER_INDEX.itemsize,
        pindex_off=pindex_offset(header), max_peers=int(header["max_peers"]),
        peer_slots=PEER_TABLE_FACTOR * int(header["max_peers"]), addr_cap=ADDR_CAP, peer_window=PEER_WINDOW,
        msg_types=MSG_TYPES, msg_name_size=MSG_NAME_SIZE,
        ops_off=int(header["ops_off"]), op_size=OP.itemsize, op_slots=OP_SLOTS, op_name_size=OP_NAME_SIZE,
        bank_size=OP_BANK.itemsize, op_buckets=OP_BUCKETS, flag_has_error=F_HAS_ERROR, flag_outbound=F_OUTBOUND,
        kind_message=KIND_MESSAGE, kind_latency=KIND_LATENCY, kind_cont=KIND_CONTINUATION, st_cont=ST_CONT,
        sev_cont=SEV_CONT, flag_continued=F_CONTINUED, text_max=TEXT_MAX, cont_text=CONT_TEXT,
        event_slots_max=event_slots_max(int(header["capacity"])), stage_done=STAGE_DONE,
        cont_first=offset(CONT, "first"), cont_more=offset(CONT, "more"), cont_index=offset(CONT, "index"),
        cont_count=offset(CONT, "count"), cont_text_off=offset(CONT, "text"),
        text_order=_text_order(),
        log_gamma=math.log(LATENCY_GAMMA),
        seq_bits=SEQ_BITS, base_slots=BASE_SLOTS, text_size=TEXT_SIZE, type_cap=TYPE_CAP, peer_cap=PEER_CAP,
        type_slots=TYPE_SLOTS,
        w_state_bits=W_STATE_BITS, w_sev_bits=W_SEV_BITS,
        st_committed=ST_COMMITTED, st_busy=ST_BUSY, st_deleted=ST_DELETED,
        j_phase_bits=J_PHASE_BITS, ph_claimed=PH_CLAIMED, ph_owned=PH_OWNED, ph_extras=PH_EXTRAS,
        ph_counting=PH_COUNTING,
        out_clean=OUT_CLEAN, out_overwrote=OUT_OVERWROTE, out_lost=OUT_LOST,
        run_max=run_max(int(header["capacity"])), run_ttl_ns=RUN_TTL_NS, run_claiming=RUN_CLAIMING,
        run_len_bits=RUN_LEN_BITS,
        flag_truncated=F_TRUNCATED, flag_life_connect=F_LIFE_CONNECT, flag_life_disconnect=F_LIFE_DISCONNECT,
        metrics=int(bool(int(header["flags"]) & HEADER_FLAG_METRICS)),
        checksum_keys=CHECKSUM_KEYS.astype("<u8").tobytes(),
    )
    return out
