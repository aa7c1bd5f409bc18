"""The binary layout of a shmdiag segment: the one definition both paths derive from.

The numpy reader views the segment through the dtypes below; the native writer
(``_native.c``) receives the same field offsets from :func:`native_layout`. Changing a field
here changes both, and bumps :data:`VERSION` so older readers refuse the new segment.

Segment::

    [ header: 4096 bytes ][ shards: max_shards x SHARD ][ peers: max_peers x PEER ][ slots: capacity x SLOT ]

Slot word ``w`` (first u64 of every slot), published with a release store::

    w = ((seq + 1) << 5) | (severity << 2) | state        w == 0: never written

so the reader finds sequence, severity and state of every record from one array of words.
"""

from __future__ import annotations

import zlib

import numpy as np

MAGIC = b"SHMDIAG\x00"
VERSION = 1
HEADER_SIZE = 4096
SLOT_SIZE = 256
CACHE_LINE = 64

# The head word carries the clear generation with the sequence number, so the one fetch_add
# that claims a sequence number also tells the writer which era (which clear) it belongs to.
SEQ_BITS = 48
SEQ_MASK = (1 << SEQ_BITS) - 1
BASE_SLOTS = 16

# Slot word states.
ST_COMMITTED, ST_BUSY, ST_DELETED = 0, 1, 2
W_STATE_BITS, W_SEV_BITS = 2, 3
W_SEQ_SHIFT = W_STATE_BITS + W_SEV_BITS

# Writer journal (per shard): ((seq + 1) << 2) | phase; 0 when idle.
J_PHASE_BITS = 2
PH_CLAIMED, PH_OWNED, PH_COUNTING = 1, 2, 3
OUT_CLEAN, OUT_OVERWROTE, OUT_LOST = 0, 1, 2

# Shard ownership word: (pid << 8) | state.
SH_FREE, SH_ACTIVE, SH_EXITED, SH_DEAD, SH_REAPING = 0, 1, 2, 3, 4

# Record kinds: helpers store typed fields and their text is rendered at read time.
KIND_EVENT, KIND_CONNECT, KIND_DISCONNECT, KIND_MESSAGE, KIND_ERROR, KIND_LATENCY = 0, 1, 2, 3, 4, 5
KIND_MAX = KIND_LATENCY

# Record flags.
F_TRUNCATED = 1
F_OUTBOUND = 2
F_HAS_ERROR = 4
F_HAS_METADATA = 8
F_LIFE_CONNECT = 16
F_LIFE_DISCONNECT = 32

# Text area of a slot: event_type and peer_id have caps of their own; the three free fields
# (metadata JSON, error, message for record_event) share what is left, in that order.
TEXT_SIZE = 200
TYPE_CAP = 32
PEER_CAP = 64

# Event types each shard counts individually; the last entry collects the rest.
TYPE_SLOTS = 64
TYPE_NAME_SIZE = 32
OTHER_TYPE = "(other)"
BUILTIN_TYPES = ("peer_connected", "peer_disconnected", "message", "error", "latency")

HEADER_FLAG_METRICS = 1
HEADER_FLAG_HEALTH = 2
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
EXPORT_FORMATS = ("json", "ndjson")


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
    ("header_crc", "<u4", 124),
    # live words, each hot one on a cache line of its own
    ("head", "<u8", 256),                 # (generation << SEQ_BITS) | next sequence number
    ("base_of", "<u8", (BASE_SLOTS,), 320),  # first sequence number of generation g, at g % BASE_SLOTS
    ("peers_untracked", "<u8", 384),  # lifecycle events of peers that found the peer table full
)
HEADER_STATIC_SIZE = 124  # bytes covered by header_crc

SHARD = _struct(
    2816,
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
)

PEER = _struct(
    96,
    ("key_state", "<u8", 0),  # 0 empty, 1 key being written, (fnv1a(key) << 2) | 2 ready
    ("life", "<u8", 8),       # ((seq + 1) << 1) | connected, of the latest lifecycle event
    ("key_len", "<u1", 16),
    ("key", f"S{PEER_CAP}", 24),
)

SLOT = _struct(
    SLOT_SIZE,
    ("w", "<u8", 0),
    ("seq", "<u8", 8),
    ("ts_ns", "<i8", 16),
    ("value", "<i8", 24),
    ("checksum", "<u8", 32),
    ("pid", "<u4", 40),
    ("severity", "<u1", 44),
    ("kind", "<u1", 45),
    ("flags", "<u1", 46),
    ("lens", "<u1", (5,), 48),   # event_type, peer_id, f1, f2, f3
    ("text", "<u1", (TEXT_SIZE,), 56),
)
assert SLOT.itemsize == SLOT_SIZE and HEADER.itemsize == HEADER_SIZE

# Checksum: sum over the slot's u64 words of word * key, mod 2**64, leaving out the slot word
# and the checksum itself. Odd keys make any single changed word change the sum.
_NWORDS = SLOT_SIZE // 8
CHECKSUM_KEYS = (np.arange(1, _NWORDS + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)) | np.uint64(1)
CHECKSUM_KEYS[SLOT.fields["w"][1] // 8] = 0
CHECKSUM_KEYS[SLOT.fields["checksum"][1] // 8] = 0


def w_seq(w: np.ndarray | int):
    """Sequence number held by slot words (valid only where w != 0)."""
    return (w >> W_SEQ_SHIFT) - 1


def w_state(w):
    return w & ((1 << W_STATE_BITS) - 1)


def w_severity(w):
    return (w >> W_STATE_BITS) & ((1 << W_SEV_BITS) - 1)


def w_make(seq: int, severity: int, state: int) -> int:
    return ((seq + 1) << W_SEQ_SHIFT) | (severity << W_STATE_BITS) | state


def j_make(seq: int, phase: int) -> int:
    return ((seq + 1) << J_PHASE_BITS) | phase


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def segment_offsets(capacity: int, max_shards: int, max_peers: int) -> dict[str, int]:
    """Where each region starts, and the segment's total size, for a ring of this shape."""
    shards_off = HEADER_SIZE
    peers_off = _align(shards_off + max_shards * SHARD.itemsize, CACHE_LINE)
    slots_off = _align(peers_off + max_peers * PEER.itemsize, 4096)
    return {"shards_off": shards_off, "peers_off": peers_off, "slots_off": slots_off,
            "total_size": slots_off + capacity * SLOT_SIZE}


def header_crc(raw: bytes) -> int:
    return zlib.crc32(raw[:HEADER_STATIC_SIZE])


def native_layout(header: np.void) -> dict[str, object]:
    """Every offset and constant the native writer needs, derived from the dtypes above."""
    out: dict[str, object] = {}
    for prefix, dt in (("hdr_", HEADER), ("slot_", SLOT), ("shard_", SHARD), ("peer_", PEER)):
        for name in dt.names:
            out[prefix + name] = dt.fields[name][1]
    out.update(
        capacity=int(header["capacity"]), slot_size=SLOT_SIZE, slots_off=int(header["slots_off"]),
        shards_off=int(header["shards_off"]), shard_size=SHARD.itemsize, max_shards=int(header["max_shards"]),
        peers_off=int(header["peers_off"]), peer_size=PEER.itemsize, max_peers=int(header["max_peers"]),
        seq_bits=SEQ_BITS, base_slots=BASE_SLOTS, text_size=TEXT_SIZE, type_cap=TYPE_CAP, peer_cap=PEER_CAP, type_slots=TYPE_SLOTS,
        w_state_bits=W_STATE_BITS, w_sev_bits=W_SEV_BITS,
        st_committed=ST_COMMITTED, st_busy=ST_BUSY, st_deleted=ST_DELETED,
        j_phase_bits=J_PHASE_BITS, ph_claimed=PH_CLAIMED, ph_owned=PH_OWNED, ph_counting=PH_COUNTING,
        out_clean=OUT_CLEAN, out_overwrote=OUT_OVERWROTE, out_lost=OUT_LOST,
        flag_truncated=F_TRUNCATED, flag_life_connect=F_LIFE_CONNECT, flag_life_disconnect=F_LIFE_DISCONNECT,
        metrics=int(bool(int(header["flags"]) & HEADER_FLAG_METRICS)),
        checksum_keys=CHECKSUM_KEYS.astype("<u8").tobytes(),
    )
    return out
