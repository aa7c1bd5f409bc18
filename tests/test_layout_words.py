"""The word helpers of core/layout.py decode what the native writer and the shard manager
store, for ints and numpy arrays alike."""

from __future__ import annotations

import os

import numpy as np

from shmdiag.core import layout as L
from shmdiag.core.procs import own_start_ms


def test_words_the_writers_store_decode(make_recorder):
    rec = make_recorder(100)
    rec.record_peer_connection("peer-1", "203.0.113.5:8333")
    rec.record_message("peer-1", "getheaders", "inbound", 10)
    rec.record_latency("handshake", 0.01)
    rec.record_peer_disconnection("peer-1", "203.0.113.5:8333", "bye")
    seg = rec._seg

    j = int(np.flatnonzero(L.name_ready(seg.header["msg_state"]))[0])
    st = int(seg.header["msg_state"][j])
    assert L.name_ready(st) and L.name_len(st) == len("getheaders")
    assert st == L.name_make(L.key_hash(b"getheaders"), len("getheaders"))

    ops = seg.ops["name_state"]
    k = int(np.flatnonzero(L.name_ready(ops))[0])
    assert bytes(seg.ops["name"][k])[: L.name_len(int(ops[k]))] == b"handshake"

    ks = seg.peer_index["key_state"]
    (row,) = np.flatnonzero(L.key_ready(ks))
    assert int(ks[row]) == L.key_make(L.key_hash(b"peer-1"))
    life = int(seg.peer_index["life"][row])
    owners = seg.shards["owner"]
    mine = np.flatnonzero(L.owner_state(owners) == L.SH_ACTIVE)
    assert not L.life_connected(life) and L.life_seq(life) == 3  # the disconnect, the 4th event
    assert L.life_writer(life) == int(mine[0]) + 1 and not L.life_died(life)  # recorded by this process's shard
    assert life == L.life_make(3, False, writer=int(mine[0]))

    assert L.owner_pid(owners[mine]).tolist() == [os.getpid()]
    assert int(owners[mine[0]]) == L.owner_make(os.getpid(), L.SH_ACTIVE)
    assert int(seg.shards["start_time"][mine[0]]) == own_start_ms()


def test_helpers_take_ints_and_arrays_alike():
    words = [0, 1, L.name_make(0xABCDEF, 17), L.owner_make(4_000_000, L.SH_DEAD), L.life_make(41, True, 7, True),
             L.clear_make(123, 1 << 40 | 99), L.j_make(77, L.PH_COUNTING), L.jmeta_make(5, 3, 18, L.OUT_LOST)]
    arr = np.array(words, dtype=np.uint64)
    for f in (L.name_ready, L.name_len, L.key_ready, L.key_pins, L.owner_pid, L.owner_state, L.life_connected,
              L.life_died, L.life_writer, L.life_seq, L.clear_pid, L.clear_start, L.j_seq, L.j_phase):
        # words that hold no sequence number (0, 1; for life words any below 1 << LIFE_SEQ_SHIFT) decode to none
        valid = [w >> L.LIFE_SEQ_SHIFT > 0 if f is L.life_seq else f is not L.j_seq or w > 1 for w in words]
        got, want = f(arr).tolist(), [f(w) for w in words]
        got = [x for x, v in zip(got, valid, strict=True) if v]
        assert got == [x for x, v in zip(want, valid, strict=True) if v], f.__name__
    assert (L.life_seq(words[4]), L.life_writer(words[4]), L.life_connected(words[4]), L.life_died(words[4])) == (
        41, 8, True, True)
    assert L.life_writer_died(L.life_make(41, True, 7)) == L.life_make(41, False, 7, died=True)
    assert L.key_pins(L.key_make(0xFEED, pins=3)) == 3 and L.key_ready(L.key_make(0xFEED, pins=3))
    assert not L.name_ready(0) and not L.name_ready(1) and L.name_len(words[2]) == 17
    assert (L.owner_pid(words[3]), L.owner_state(words[3])) == (4_000_000, L.SH_DEAD)
    assert (L.clear_pid(words[5]), L.clear_start(words[5])) == (123, 99)
    assert (L.j_seq(words[6]), L.j_phase(words[6])) == (77, L.PH_COUNTING)
    assert L.jmeta_fields(words[7]) == (5, 3, 18, L.OUT_LOST)


def test_the_native_key_hash_is_layout_key_hash(make_recorder):
    """Keys of every length around the 8-byte words the hash takes (bytes all different, so that
    a byte out of place changes the hash), and a message type per key: the words the writer
    publishes are those layout.key_hash names, and each key, written again, finds its entry."""
    rec = make_recorder(1000, max_peers=64)
    keys = ["ABCDEFGHIJKLMNOPQRSTU"[:n] for n in range(1, 20)] + ["ü" * 5, "203.0.113.5:8333", "x" * 64]
    for _ in range(2):
        for i, k in enumerate(keys):
            rec.record_message(k, f"t{i}", "inbound", 1)
    assert {d.peer_id: d.messages_received for d in rec.get_peer_diagnostics()} == dict.fromkeys(keys, 2)
    seg = rec._seg
    ks = seg.peer_index["key_state"]
    want = sorted(L.key_make(L.key_hash(k.encode())) + (0 << L.KEY_PIN_SHIFT) for k in keys)
    assert sorted(int(w) for w in ks[L.key_ready(ks)]) == want
    st = seg.header["msg_state"]
    names = sorted(int(w) for w in st[L.name_ready(st)])
    assert names == sorted(L.name_make(L.key_hash(f"t{i}".encode()), len(f"t{i}")) for i in range(len(keys)))
