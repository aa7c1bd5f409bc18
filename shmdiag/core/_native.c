/*
 * shmdiag._native — the parts of the writer path that need real atomics.
 *
 * Pure-Python stores have no ordering guarantees (and on aarch64 the CPU reorders them), so every
 * word that publishes something to another process goes through a GCC __atomic builtin here.
 * The record layout is NOT defined in this file: Python (shmdiag/core/layout.py) hands the field
 * offsets over as a dict when a Mapping is created, so the numpy reader and this writer derive
 * from one definition.
 *
 * The write protocol for one event with sequence number s (see core/layout.py for the word formats):
 *
 *   1. s = the next seq of this process's run; a new run is claimed with fetch_add(head, n)
 *      (claim_run) when the run is used up, 10 ms old or of an earlier clear generation. The
 *      head word also carries the clear generation (era) of the run. slot = s % capacity.
 *      The unused rest of a run given up goes back to the head if nobody claimed after it,
 *      else is counted as unused (drop_run, which says why readers stay exact).
 *   2. journal = (s, CLAIMED)                       a dead writer's event can be accounted for
 *   3. CAS the slot word from an older, non-busy value to BUSY(s)
 *        a busy occupant -> the event is dropped and counted as lost (never wait)
 *        a newer occupant (the ring lapped this run) -> new run, back to 1
 *        the run turned out older than 10 ms -> slot word put back, new run, back to 1
 *   4. the peer and latency adds planned into the shard (extras_plan: jx_*, jstep = 0);
 *      journal = (s, OWNED); payload stores; checksum
 *   5. store-release slot word = COMMITTED(s)       readers acquire-load it before and after copying
 *   6. journal = (s, EXTRAS) with the outcome; the adds, jstep counting them (extras_apply)
 *   7. journal = (s, COUNTING) with the counters' old values; counters = old + 1; journal = idle
 *
 * An event whose text does not fit one slot (fit_text) takes nslots consecutive seqs of the run
 * (a new run of at least nslots is claimed when the current one has fewer left). After step 3
 * for its first slot, it takes its continuation slots the same way (take_conts: never waiting,
 * stopping early with its text cut when it cannot), and in step 4 writes and publishes them
 * (ST_CONT, release) before the first slot is published in step 5: a reader that sees the first
 * slot committed finds every continuation published, or since replaced (then it reads the first
 * slot alone, truncated). Every live event its slots replaced is counted as overwritten (jmeta
 * carries the count); the event itself is one event in every counter.
 *
 * Step 7 stores "old + 1" rather than incrementing, so a reaper that finds a dead writer in
 * COUNTING can redo it idempotently; in earlier phases the counters are untouched and the reaper
 * applies them itself, after finishing the adds from jstep on in EXTRAS, or all of them in
 * OWNED with the slot published (core/shards.py: _settle_journal). Within one process the GIL
 * serialises calls into write(), so each process owns one shard and its plain-store counters.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <unistd.h>
#include <pthread.h>
#include <errno.h>
#include <sys/mman.h>
#include <datetime.h>

#define NWORDS_MAX 64

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() do { } while (0)
#endif

static pid_t g_pid;
static void after_fork_child(void) { g_pid = getpid(); }

static PyObject *NoShardError;
static PyObject *ClosedError;
static PyObject *ReadOnlyError;   /* a write through a read-only Mapping */

typedef struct {
    /* header */
    Py_ssize_t hdr_head, hdr_base_of, hdr_peers_untracked, hdr_peer_events_untracked, hdr_peers_used,
        hdr_msg_state, hdr_msg_name, seq_bits, base_slots;
    /* ring */
    Py_ssize_t slots_off, slot_size, capacity;
    Py_ssize_t slot_w, slot_ts_ns, slot_value, slot_checksum, slot_pid, slot_severity,
        slot_kind, slot_flags, slot_lens, slot_text;
    Py_ssize_t text_size, type_cap, peer_cap;
    /* shards */
    Py_ssize_t shards_off, shard_size, max_shards;
    Py_ssize_t shard_owner, shard_start_time, shard_base, shard_journal, shard_jmeta, shard_jts, shard_jprev, shard_jbefore,
        shard_recorded, shard_overwritten, shard_lost, shard_abandoned, shard_expired,
        shard_first_ts, shard_last_ts, shard_sev, shard_type_count, type_slots, shard_run, shard_run_t0,
        shard_unused, shard_jstep, shard_jx_peer, shard_jx_bank, shard_jx_value, shard_jx_info,
        shard_jbefore_msg, shard_msg_count, shard_msg_bytes, shard_jpin, shard_staged;
    Py_ssize_t run_max, run_ttl_ns, run_claiming, run_len_bits;
    /* peers */
    Py_ssize_t peers_off, peer_size, max_peers, peer_slots, peer_window, addr_cap, msg_types, msg_name_size;
    Py_ssize_t hdr_recycled_era, hdr_recycled, pindex_off, pidx_size, pidx_key_state, pidx_life, pidx_idle;
    Py_ssize_t peer_era, peer_key_len, peer_addr_len, peer_connected_at,
        peer_last_activity, peer_msgs_sent, peer_msgs_recv, peer_bytes_sent, peer_bytes_recv, peer_errors,
        peer_ping_count, peer_ping_sum_ns, peer_ping_last_ns, peer_ping_min_ns, peer_events, peer_key, peer_addr,
        peer_bytes_sent_per_msg, peer_bytes_recv_per_msg;
    /* timed operations */
    Py_ssize_t ops_off, op_size, op_slots, op_name_size, op_name_state, op_name, op_banks;
    Py_ssize_t bank_size, bank_count, bank_errors, bank_sum_ns, bank_max_ns, bank_gen, bank_buckets, op_buckets;
    /* word formats */
    Py_ssize_t w_state_bits, w_sev_bits, st_committed, st_busy, st_deleted;
    Py_ssize_t j_phase_bits, ph_claimed, ph_owned, ph_extras, ph_counting;
    Py_ssize_t out_clean, out_overwrote, out_lost;
    Py_ssize_t flag_truncated, flag_life_connect, flag_life_disconnect, flag_has_error, flag_outbound;
    Py_ssize_t kind_message, kind_latency;
    /* events of several slots (layout.CONT) */
    Py_ssize_t kind_cont, st_cont, sev_cont, flag_continued, text_max, cont_text, event_slots_max, stage_done,
        cont_first, cont_more, cont_index, cont_count, cont_text_off;
    Py_ssize_t metrics;
    double log_gamma;   /* not in layout_keys: read as a float */
} Layout;

static const struct { const char *name; size_t off; } layout_keys[] = {
#define K(f) {#f, offsetof(Layout, f)}
    K(hdr_head), K(hdr_base_of), K(hdr_peers_untracked), K(hdr_peer_events_untracked), K(hdr_peers_used),
    K(hdr_msg_state), K(hdr_msg_name), K(seq_bits), K(base_slots),
    K(slots_off), K(slot_size), K(capacity),
    K(slot_w), K(slot_ts_ns), K(slot_value), K(slot_checksum), K(slot_pid),
    K(slot_severity), K(slot_kind), K(slot_flags), K(slot_lens), K(slot_text),
    K(text_size), K(type_cap), K(peer_cap),
    K(shards_off), K(shard_size), K(max_shards),
    K(shard_owner), K(shard_start_time), K(shard_base), K(shard_journal), K(shard_jmeta), K(shard_jts), K(shard_jprev), K(shard_jbefore),
    K(shard_recorded), K(shard_overwritten), K(shard_lost), K(shard_abandoned), K(shard_expired),
    K(shard_first_ts), K(shard_last_ts),
    K(shard_sev), K(shard_type_count), K(type_slots), K(shard_run), K(shard_run_t0),
    K(shard_unused), K(shard_jstep), K(shard_jx_peer), K(shard_jx_bank), K(shard_jx_value), K(shard_jx_info),
    K(shard_jbefore_msg), K(shard_msg_count), K(shard_msg_bytes), K(shard_jpin), K(shard_staged),
    K(run_max), K(run_ttl_ns), K(run_claiming), K(run_len_bits),
    K(peers_off), K(peer_size), K(max_peers), K(peer_slots), K(peer_window), K(addr_cap), K(msg_types), K(msg_name_size),
    K(hdr_recycled_era), K(hdr_recycled), K(pindex_off), K(pidx_size), K(pidx_key_state), K(pidx_life), K(pidx_idle),
    K(peer_era), K(peer_key_len), K(peer_addr_len), K(peer_connected_at),
    K(peer_last_activity), K(peer_msgs_sent), K(peer_msgs_recv), K(peer_bytes_sent), K(peer_bytes_recv),
    K(peer_errors), K(peer_ping_count), K(peer_ping_sum_ns), K(peer_ping_last_ns), K(peer_ping_min_ns),
    K(peer_events), K(peer_key), K(peer_addr), K(peer_bytes_sent_per_msg), K(peer_bytes_recv_per_msg),
    K(ops_off), K(op_size), K(op_slots), K(op_name_size), K(op_name_state), K(op_name), K(op_banks),
    K(bank_size), K(bank_count), K(bank_errors), K(bank_sum_ns), K(bank_max_ns), K(bank_gen), K(bank_buckets), K(op_buckets),
    K(w_state_bits), K(w_sev_bits), K(st_committed), K(st_busy), K(st_deleted),
    K(j_phase_bits), K(ph_claimed), K(ph_owned), K(ph_extras), K(ph_counting),
    K(out_clean), K(out_overwrote), K(out_lost),
    K(flag_truncated), K(flag_life_connect), K(flag_life_disconnect), K(flag_has_error), K(flag_outbound),
    K(kind_message), K(kind_latency),
    K(kind_cont), K(st_cont), K(sev_cont), K(flag_continued), K(text_max), K(cont_text), K(event_slots_max), K(stage_done),
    K(cont_first), K(cont_more), K(cont_index), K(cont_count), K(cont_text_off),
    K(metrics),
#undef K
};

#define HOT_MAX 8

/* Branch hints for the write path: its rare cases (a new run, a busy slot, an event of several
 * slots, a new peer) laid out of the way, so the common case runs through fewer code lines --
 * the ones a cold call must fetch. */
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

/* A staged event: which route took it (0 record_message, 1 span), and what the call gave. Its
 * n1 + n2 text bytes (peer, then message type or operation) follow it, and the next event
 * starts at the next multiple of 8: packed, a crawler's event takes 48 bytes of the batch, so
 * staging writes, and the batch's write reads back, under one cache line per event. */
#define STAGE_PEER 64   /* layout.PEER_CAP: a longer peer id is written at once, not staged */
#define STAGE_F1 32     /* layout.OP_NAME_SIZE (message types: MSG_NAME_SIZE, shorter) */
#define BATCH_MAX 1024
struct Staged {
    unsigned char route, n1, n2;
    int flags;
    int64_t ts, value;
};
#define STAGED_MAX ((sizeof(struct Staged) + STAGE_PEER + STAGE_F1 + 7) & ~(size_t)7)

/* write()'s eleven arguments as C values: a route's template, parsed when it is set (its texts
 * point into the template's str objects, which the Mapping holds). */
typedef struct {
    long kind, sev, flags, tidx;
    int64_t ts, value;
    const char *tp[5];
    Py_ssize_t tn[5];
} Tmpl;

typedef struct {
    PyObject_HEAD
    /* What a staged call reads and writes (Mapping_message, Span_exit, batch_stage) comes first,
     * together: inside a busy program each line of it is a cache miss per call. */
    char *mem;              /* NULL once released */
    char *shard;            /* this process's counter shard, or NULL */
    char *staged_word;      /* the shard's "staged" words (shard + L.shard_staged), or NULL */
    pid_t shard_pid;
    int readonly;           /* mapped without write access: every operation that stores raises */
    /* The batch (set_batch, by process batch_pid: a forked child does not batch, and leaves
     * its copy of the parent's batch to the parent): nbatch events the routes took and have
     * not written yet, in call order, packed from bbuf to bpos (struct Staged); written when
     * batch_max are staged, when the first is batch_delay_ns old at the next call, before any
     * other write, and by flush(). */
    int batch_max, nbatch;
    pid_t batch_pid;
    int span_flags_c;       /* span_t.flags */
    int msg_flags_c[2];     /* record_message's flags of each direction, as msg_flags */
    PyObject *msg_slow, *msg_dir[2], *span_slow, *span_tmpl;   /* of the routes: see below */
    char *bbuf, *bpos;
    int64_t batch_delay_ns, batch_t0, batch_off;   /* batch_off: see batch_stage */
    uint64_t staged[2];     /* the "staged" words' values, which only this process writes */
    /* What warm() asks for at a write's first instruction (see there): the shard's and the
     * header's lines every event touches (set by bind_shard), and the slot the next event of
     * this run goes to. */
    char *hot[HOT_MAX];
    char *next_rec;
    int nhot;
    Py_buffer view;
    Layout L;
    uint64_t keys[NWORDS_MAX];
    Py_ssize_t nwords;
    unsigned char order[256][3];   /* per kind: f1..f3 (text indices 2..4) in the order they get room */
    int peer_shift;         /* log2(peer_size): an entry's row from its offset without a division */
    PyObject *provider;     /* called when write() finds no shard for this pid (first write, after fork) */
    /* record_message's route (set_message): msg_slow, the Python method for anything but the
     * common case; write()'s 11 arguments with placeholders; the flags of each direction (as
     * Python ints; msg_flags_c) and their names (msg_dir). */
    PyObject *msg_tmpl, *msg_flags[2];
    Tmpl msg_t;             /* msg_tmpl parsed once (flags, size, peer and type are each call's) */
    /* span's route (set_span): span_slow, the Python method; the Python handler of a block
     * that raised; and span_tmpl, write()'s 11 arguments of a latency event with placeholders. */
    PyObject *span_failed;
    Tmpl span_t;            /* span_tmpl parsed once */
    /* This process's run of sequence numbers [bnext, bend), claimed with head word bhead (its
     * generation) at CLOCK_MONOTONIC bt0, for shard bshard by process bpid; and its rate:
     * win_count events since win_start, rate_n in the window before. */
    uint64_t bnext, bend, bhead, bbase, win_count, rate_n;
    uint64_t bslot;         /* bnext % capacity, kept by additions: no division per event */
    int64_t bt0, last_mono, win_start;
    char *bshard;
    pid_t bpid;
    /* Slot chunks (PF_CHUNK bytes of the mapping) this process has pre-faulted (prefault_chunks):
     * pf_map[i] for chunk i, valid for process pf_pid; pf_off once the kernel refused. */
    unsigned char *pf_map;
    Py_ssize_t pf_chunks;
    pid_t pf_pid;
    int pf_off;
} Mapping;

static void batch_write(Mapping *self);
static int batch_flush(Mapping *self);

#define U64(p) ((uint64_t *)(p))
#define I64(p) ((int64_t *)(p))

static inline uint64_t ld_acq(char *p) { return __atomic_load_n(U64(p), __ATOMIC_ACQUIRE); }
static inline uint64_t ld_rlx(char *p) { return __atomic_load_n(U64(p), __ATOMIC_RELAXED); }
static inline void st_rel(char *p, uint64_t v) { __atomic_store_n(U64(p), v, __ATOMIC_RELEASE); }
static inline void st_rlx(char *p, uint64_t v) { __atomic_store_n(U64(p), v, __ATOMIC_RELAXED); }

static inline uint64_t w_make(const Layout *L, uint64_t seq, unsigned sev, uint64_t state) {
    return ((seq + 1) << (L->w_state_bits + L->w_sev_bits)) | ((uint64_t)sev << L->w_state_bits) | state;
}
static inline uint64_t w_seq1(const Layout *L, uint64_t w) { return w >> (L->w_state_bits + L->w_sev_bits); }
static inline uint64_t w_state(const Layout *L, uint64_t w) { return w & ((1u << L->w_state_bits) - 1); }
static inline uint64_t j_make(const Layout *L, uint64_t seq, uint64_t phase) {
    return ((seq + 1) << L->j_phase_bits) | phase;
}

/* Longest prefix of p[0:n] (n <= len) that does not split a UTF-8 sequence. */
static inline Py_ssize_t utf8_floor(const char *p, Py_ssize_t len, Py_ssize_t n) {
    if (n >= len) return len;
    while (n > 0 && (((unsigned char)p[n]) & 0xC0) == 0x80) n--;
    return n;
}

/* The UTF-8 bytes of a str (or the bytes of a bytes). Inline, with the common cases read from the
 * object directly: an ASCII str is its own UTF-8, and any other str caches its UTF-8 once it was
 * asked for it (PyUnicode_AsUTF8AndSize, the general case, does both but costs a call each). */
static inline __attribute__((always_inline)) int get_text(PyObject *o, const char **p, Py_ssize_t *n) {
    if (PyUnicode_Check(o)) {
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_IS_READY(o) && PyUnicode_IS_COMPACT_ASCII(o)) {
#else
        if (PyUnicode_IS_COMPACT_ASCII(o)) {
#endif
            *p = (const char *)(((PyASCIIObject *)o) + 1);
            *n = ((PyASCIIObject *)o)->length;
            return 0;
        }
        *p = PyUnicode_AsUTF8AndSize(o, n);   /* cached in the str object: no copy after first use */
        return *p ? 0 : -1;
    }
    if (PyBytes_Check(o)) {
        *p = PyBytes_AS_STRING(o);
        *n = PyBytes_GET_SIZE(o);
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "text fields must be str or bytes, not %.100s", Py_TYPE(o)->tp_name);
    return -1;
}

/* The n < 8 bytes at p as a little-endian word, zero-extended: two overlapping loads (or three
 * bytes), never reading outside p[0:n], where a byte loop took ~6 instructions a byte. */
static inline __attribute__((always_inline)) uint64_t tail_word(const char *p, Py_ssize_t n) {
    if (n >= 4) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + n - 4, 4);   /* bytes n-4..n-1: where they overlap lo, the same bytes */
        return lo | ((uint64_t)hi << (8 * (n - 4)));
    }
    if (n <= 0) return 0;
    return (uint64_t)(unsigned char)p[0] | (uint64_t)(unsigned char)p[n / 2] << (8 * (n / 2)) |
           (uint64_t)(unsigned char)p[n - 1] << (8 * (n - 1));
}

/* The hash of peer keys and registry names (layout.key_hash is the same in Python): eight bytes
 * per multiply, so a 20-byte peer address costs 3 multiplies where FNV-1a's byte loop cost 20
 * in one dependent chain; then a finaliser (murmur3's) so every bit of the key reaches every bit
 * of the hash. Little-endian words: every writer of a ring runs on the one machine. */
static inline __attribute__((always_inline)) uint64_t key_hash(const char *p, Py_ssize_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
    }
    h = (h ^ tail_word(p, n)) * 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33; h *= 0xC4CEB9FE1A85EC53ULL; h ^= h >> 33;
    return h;
}

/* a[0:n] == b[0:n] for short keys, inline (memcmp is a call into libc). */
static inline __attribute__((always_inline)) int same_bytes(const char *a, const char *b, Py_ssize_t n) {
    for (; n >= 8; a += 8, b += 8, n -= 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y) return 0;
    }
    return tail_word(a, n) == tail_word(b, n);
}

/* A position in [0, n) from 32 bits of a hash, by a multiply and a shift rather than a division
 * (Lemire's "fastrange"): a 64-bit div costs tens of cycles, and the peer and registry lookups of
 * every record_message took three. n < 2**32. The same function in every writer of a ring
 * (layout VERSION pins it), so every process finds a key's candidates at the same places. */
static inline uint64_t fastrange32(uint32_t x, uint64_t n) { return ((uint64_t)x * n) >> 32; }

static inline void add_rlx(char *p, uint64_t v) { __atomic_fetch_add(U64(p), v, __ATOMIC_RELAXED); }
/* An add that no earlier store of this thread may be moved after (by the compiler or the CPU):
 * the same lock xadd on x86. Used where a journal store must precede the add (extras_apply). */
static inline void add_rel(char *p, uint64_t v) { __atomic_fetch_add(U64(p), v, __ATOMIC_RELEASE); }

static inline void max_rlx(char *p, uint64_t v) {
    uint64_t cur = ld_rlx(p);
    while (cur < v && !__atomic_compare_exchange_n(U64(p), &cur, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
}

/* Find or name `key` in a small ring-wide registry (message types, timed operations) of n
 * entries: state words at st + j * sstride, names at nm + j * nstride. The state word is 0
 * (empty), 1 (a name being written) or (hash << 8) | (len << 2) | 2, published with a release
 * store after the name bytes, so a matching state word means the name beside it is complete.
 * An entry being named is skipped, not waited for; a racing second entry for the same name can
 * result, and readers merge entries by name. Returns -1 when the registry is full. */
static Py_ssize_t registry_find(char *st, Py_ssize_t sstride, char *nm, Py_ssize_t nstride, Py_ssize_t n,
                                const char *key, Py_ssize_t klen) {
    if (klen <= 0 || klen > 63 || n <= 0) return -1;
    uint64_t h = key_hash(key, klen);
    uint64_t tag = ((h & 0x00FFFFFFFFFFFFFFULL) << 8) | ((uint64_t)klen << 2) | 2;
    Py_ssize_t j0 = (Py_ssize_t)fastrange32((uint32_t)(h >> 32), (uint64_t)n);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t j = j0 + i < n ? j0 + i : j0 + i - n;
        char *s = st + j * sstride;
        if (i == 0) __builtin_prefetch(nm + j * nstride, 0, 3);   /* the name, with its state word */
        uint64_t k = ld_acq(s);
        if (UNLIKELY(k == 0)) {
            uint64_t expect = 0;
            if (__atomic_compare_exchange_n(U64(s), &expect, 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                memcpy(nm + j * nstride, key, (size_t)klen);
                st_rel(s, tag);
                return j;
            }
            k = expect;
        }
        if (k == tag && same_bytes(nm + j * nstride, key, klen)) return j;
    }
    return -1;
}

/* ---- the peer table ----------------------------------------------------------------------
 *
 * peer_slots = 2 x max_peers entries. A key's entry is one of its 2 x peer_window candidates:
 * two windows of peer_window consecutive entries, at two positions given by its hash (through
 * a multiply each; with the FNV-1a hash of layout VERSION 10, whose high bits barely changed
 * with a key's last bytes, keys "new-1230".."new-1239" all landed in one window). Each entry's
 * key_state, life and idle words are in the dense index (layout.PEER_INDEX, same row), so a
 * lookup or a recycling scan reads the 32 candidates' words from ~14 cache lines, and the entry
 * itself only once it is chosen. The ordering argument below is about those words, wherever
 * they are. The key_state word (see key_make in core/layout.py):
 *
 *   0                                   empty (never used)
 *   KEY_WRITING                         being (re)written by one process: skipped by everyone else
 *   (hash48 << 16) | (pins << 2) | 2    ready: key, key_len and a zeroed entry are published
 *
 * A writer uses an entry only while it holds a pin: a CAS that adds one to `pins` of a ready
 * word with its key's hash (then the key bytes are compared: they cannot change while pinned),
 * and a release fetch_sub when done. Candidates are filled in order and never become empty
 * again, so a lookup stops at the first empty candidate: the key is not beyond it.
 *
 * Recycling. When a new key finds no empty candidate, it recycles the candidate whose peer has
 * been not connected the longest (lowest `idle`: seq + 1 of its latest disconnect, or of the
 * event that inserted it if it never connected). The recycler takes the entry with one CAS
 * from ready-with-0-pins to KEY_WRITING; that CAS is the whole ordering argument:
 *   - it fails while anyone holds a pin, and no one can pin a word that is not ready, so from
 *     the CAS on nobody but the recycler touches the entry until it publishes the new key;
 *   - every earlier holder's adds happened before its release unpin, which the CAS (acquire)
 *     reads from, so the recycler sees every add to the old counters: it folds them into the
 *     header's `recycled` totals exactly, then zeroes the entry and publishes the new key with
 *     a release store (already pinned once, for itself); a process that looked the old key up
 *     and had not pinned yet fails its pin CAS (the word changed) and looks again.
 *   - a peer connects only through a pinned entry, so the recycler re-checks `life` after its
 *     CAS and puts the word back if the peer connected meanwhile: connected peers are never
 *     recycled. (The reaper clears `connected` of a dead writer's peers with a CAS on `life`
 *     alone, which only ever makes an entry recyclable.)
 * Who holds a pin. Pins are a count, so the word cannot say whose they are; each writer holds
 * at most one at a time (one event in write() at a time per process: the GIL) and names it in
 * its shard's "jpin" word (row + 1): stored just after its pin CAS succeeds, cleared just before
 * its unpin (peer_pin_held, peer_unpin_held). A writer SIGKILLed in between leaves "jpin" naming
 * the entry, and the reaper, which alone owns the dead shard (its REAPING CAS), takes exactly one
 * pin off that entry after settling the writer's adds (settle_pin): pins live writers hold on
 * the same entry are theirs and stay. The order of those stores is what makes it safe: killed on
 * the boundary after the pin CAS (before "jpin") or after clearing "jpin" (before the unpin), the
 * writer leaves its pin held and "jpin" empty: that entry stays pinned, never recycled (the peer
 * still works), which is the only loss; the other order would let the reaper take a pin that is
 * not the dead writer's, and a recycler then take an entry from under a live writer. A writer
 * SIGKILLed while writing a key (KEY_WRITING) leaves that entry unusable: no shard names it (a
 * name stored before the CAS could not tell the reaper whether the CAS happened). NULL from
 * peer_find: every candidate is connected, pinned or being written; the caller counts the event
 * untracked. */
#define KEY_WRITING 1ULL
#define KEY_READY 2ULL
#define KEY_PIN (1ULL << 2)
#define KEY_PINS_MASK (((1ULL << 14) - 1) << 2)
#define KEY_HASH_SHIFT 16
#define LIFE_CONNECTED 1ULL
#define LIFE_DIED 2ULL
#define LIFE_WRITER_SHIFT 2
#define LIFE_SEQ_SHIFT 16
#define ERA_ZEROING UINT64_MAX

/* Row r's entry and its index words (key_state, life, idle). */
static inline char *peer_entry(const Mapping *m, uint64_t r) { return m->mem + m->L.peers_off + ((Py_ssize_t)r << m->peer_shift); }
static inline char *peer_ix(const Mapping *m, uint64_t r) { return m->mem + m->L.pindex_off + (Py_ssize_t)r * m->L.pidx_size; }
static inline char *peer_ix_of(const Mapping *m, char *e) {
    return peer_ix(m, (uint64_t)((e - (m->mem + m->L.peers_off)) >> m->peer_shift));
}

static inline void peer_unpin(const Layout *L, char *x) {
    __atomic_fetch_sub(U64(x + L->pidx_key_state), KEY_PIN, __ATOMIC_RELEASE);
}

/* The writer's record of the pin it holds (see "Who holds a pin" above), in its shard sh: named
 * just after the pin CAS (which is acq_rel, so the store stays after it), cleared just before
 * the unpin (a release RMW, so the store stays before it). */
static inline void peer_pin_held(const Layout *L, char *sh, uint64_t r) {
    st_rlx(sh + L->shard_jpin, r + 1);
}
static inline void peer_unpin_held(const Layout *L, char *sh, char *x) {
    st_rlx(sh + L->shard_jpin, 0);
    peer_unpin(L, x);
}

/* The one writer whose CAS moves an era word from an older generation to ZEROING zeroes what it
 * guards (zero(p)) and stores the new era with release; others wait, and give up after a bounded
 * spin rather than wait on a writer that died mid-zeroing. A fresh word (0) is simply adopted.
 * Returns 1: current; 0: base belongs to an older generation than the word's; -1: gave up. */
static int era_current(const Layout *L, char *gp, uint64_t base, void (*zero)(const Layout *, char *), char *p) {
    uint64_t want = base + 1;
    for (int spin = 0; spin < 100000; spin++) {
        uint64_t eg = ld_acq(gp);
        if (eg == want) return 1;
        if (eg == ERA_ZEROING) { CPU_RELAX(); continue; }
        if (eg > want) return 0;
        if (eg == 0) {
            if (__atomic_compare_exchange_n(U64(gp), &eg, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return 1;
            continue;
        }
        if (!__atomic_compare_exchange_n(U64(gp), &eg, ERA_ZEROING, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
        zero(L, p);
        st_rel(gp, want);   /* the zeroes before the era that lets others add */
        return 1;
    }
    return -1;
}

static void zero_peer_counters(const Layout *L, char *e) {
    const Py_ssize_t c[] = {L->peer_msgs_sent, L->peer_msgs_recv, L->peer_bytes_sent, L->peer_bytes_recv,
                            L->peer_errors, L->peer_ping_count, L->peer_ping_sum_ns, L->peer_ping_last_ns,
                            L->peer_ping_min_ns, L->peer_events};
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) st_rlx(e + c[i], 0);
    for (Py_ssize_t i = 0; i < L->msg_types; i++) {
        st_rlx(e + L->peer_bytes_sent_per_msg + 8 * i, 0);
        st_rlx(e + L->peer_bytes_recv_per_msg + 8 * i, 0);
    }
}

#define RECYCLED_N 9   /* layout.RECYCLED_FIELDS: the 8 counters below, then how many entries */
static void zero_recycled(const Layout *L, char *mem) {
    for (int i = 0; i < RECYCLED_N; i++) st_rlx(mem + L->hdr_recycled + 8 * i, 0);
}

/* Per-peer counters of the current clear generation, named by its base (first sequence number,
 * which only grows) + 1 in the entry's era word (era_current). An event of an older generation
 * arriving late leaves the counters alone. Returns 1: count into them; 0: skip; -1: gave up. */
static int peer_counters_current(const Layout *L, char *e, uint64_t base) {
    return era_current(L, e + L->peer_era, base, zero_peer_counters, e);
}

static inline uint64_t era_base(Mapping *m, uint64_t head);

/* The recycler holds entry e (KEY_WRITING): add what it counted in the current generation to
 * the header's recycled totals, so aggregate figures stay exact. */
static void peer_fold(Mapping *m, char *e) {
    const Layout *L = &m->L;
    uint64_t base = era_base(m, ld_acq(m->mem + L->hdr_head));
    char *tot = m->mem + L->hdr_recycled;
    if (era_current(L, m->mem + L->hdr_recycled_era, base, zero_recycled, m->mem) <= 0) return;
    add_rlx(tot + 8 * 8, 1);
    if (ld_acq(e + L->peer_era) != base + 1) return;   /* counters of a cleared generation */
    const Py_ssize_t c[] = {L->peer_msgs_sent, L->peer_msgs_recv, L->peer_bytes_sent, L->peer_bytes_recv,
                            L->peer_errors, L->peer_events, L->peer_ping_count, L->peer_ping_sum_ns};
    for (int i = 0; i < 8; i++) {
        uint64_t v = ld_rlx(e + c[i]);
        if (v) add_rlx(tot + 8 * i, v);
    }
}

/* Find `key`'s entry, or give it one (an empty candidate, else a recycled one), and return it
 * pinned, named in the writer's shard (m->shard: only write() calls this, with a shard bound):
 * the caller must peer_unpin_held its index words (peer_ix_of). seq: the event's, for the
 * recycling order. */
static char *peer_find(Mapping *m, const char *key, Py_ssize_t n, uint64_t seq, Py_ssize_t hint) {
    const Layout *L = &m->L;
    if (n <= 0 || L->peer_slots <= 0 || L->peer_window <= 0) return NULL;
    if (n > L->peer_cap) n = utf8_floor(key, n, L->peer_cap);
    uint64_t h = key_hash(key, n);
    uint64_t tag = (h << KEY_HASH_SHIFT) | KEY_READY;
    /* Where the windows start: the high halves of two odd multiples of the hash, which carry
     * every bit of it up (two independent multiplies: a few cycles, on every lookup). */
    uint64_t s1 = fastrange32((uint32_t)((h * 0xC2B2AE3D27D4EB4FULL) >> 32), (uint64_t)L->peer_slots);
    uint64_t s2 = fastrange32((uint32_t)((h * 0x9E3779B97F4A7C15ULL) >> 32), (uint64_t)L->peer_slots);
    Py_ssize_t nc = 2 * L->peer_window;
    for (int attempt = 0; attempt < 8; attempt++) {
        uint64_t empty = UINT64_MAX, victim = UINT64_MAX;
        uint64_t victim_k = 0, victim_idle = UINT64_MAX;
        uint64_t S = (uint64_t)L->peer_slots;
        for (Py_ssize_t i = 0, r = 0; i < nc; i++, r++) {
            if (i == 0) {
                r = (Py_ssize_t)s1;
                /* The first candidate's entry (its first line, its key's) with its index word:
                 * a known key is usually there, and the entry is the same row. */
                if (attempt == 0 && (uint64_t)r < (uint64_t)L->peer_slots) {
                    char *e1 = peer_entry(m, (uint64_t)r);
                    __builtin_prefetch(e1, 1, 3);
                    __builtin_prefetch(e1 + L->peer_key, 0, 3);
                    if (hint >= 0) __builtin_prefetch(e1 + hint, 1, 3);
                }
            } else if (i == 1 && attempt == 0) {
                /* Past the first candidate (a known key is usually there): both windows' index
                 * words, a few cache lines each, asked for at once rather than one miss after
                 * another (a new key reads them all). */
                char *w1 = peer_ix(m, s1), *w2 = peer_ix(m, s2);
                Py_ssize_t span = L->peer_window * L->pidx_size;
                for (Py_ssize_t off = 0; off < span; off += 64) {
                    __builtin_prefetch(w1 + off + 64, 0, 3);
                    __builtin_prefetch(w2 + off, 0, 3);
                }
                __builtin_prefetch(w2 + span - 1, 0, 3);
            }
            if (i == L->peer_window) r = (Py_ssize_t)s2;
            if ((uint64_t)r >= S) r = 0;   /* a window runs past the last row: on from row 0 */
            char *x = peer_ix(m, (uint64_t)r);
            char *ks = x + L->pidx_key_state;
            uint64_t k = ld_acq(ks);
            if (UNLIKELY(k == 0)) { empty = (uint64_t)r; break; }
            if (UNLIKELY((k & 3) != KEY_READY)) continue;
            if (LIKELY((k & ~KEY_PINS_MASK) == tag)) {
                int pinned = 0;
                while ((k & ~KEY_PINS_MASK) == tag && (k & KEY_PINS_MASK) != KEY_PINS_MASK) {
                    if (__atomic_compare_exchange_n(U64(ks), &k, k + KEY_PIN, 1, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
                        peer_pin_held(L, m->shard, (uint64_t)r);
                        pinned = 1;
                        break;
                    }
                }
                if (LIKELY(pinned)) {
                    char *e = peer_entry(m, (uint64_t)r);
                    if (LIKELY(*(unsigned char *)(e + L->peer_key_len) == n && same_bytes(e + L->peer_key, key, n)))
                        return e;
                    peer_unpin_held(L, m->shard, x);   /* another key with the same 48-bit hash */
                }
                continue;
            }
            if ((k & KEY_PINS_MASK) == 0 && !(ld_rlx(x + L->pidx_life) & LIFE_CONNECTED)) {
                uint64_t idle = ld_rlx(x + L->pidx_idle);
                if (idle < victim_idle) {
                    victim = (uint64_t)r; victim_k = k; victim_idle = idle;
                    /* The likely victim's entry, cold, fetched while the scan goes on: the lines
                     * its counters are folded from (the running minimum changes ~4 times). */
                    char *e = peer_entry(m, (uint64_t)r);
                    __builtin_prefetch(e, 1, 3);
                    __builtin_prefetch(e + 128, 1, 3);
                }
            }
        }
        uint64_t r = empty != UINT64_MAX ? empty : victim;
        if (r == UINT64_MAX) return NULL;
        char *e = peer_entry(m, r), *x = peer_ix(m, r);
        for (Py_ssize_t off = 0; off < L->peer_size; off += 64) __builtin_prefetch(e + off, 1, 3);   /* all of it is written */
        char *ks = x + L->pidx_key_state;
        uint64_t expect = empty != UINT64_MAX ? 0 : victim_k;
        if (!__atomic_compare_exchange_n(U64(ks), &expect, KEY_WRITING, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            continue;   /* someone else took it, or pinned it: look again */
        if (empty != UINT64_MAX) {
            add_rlx(m->mem + L->hdr_peers_used, 1);
        } else {
            if (ld_acq(x + L->pidx_life) & LIFE_CONNECTED) {   /* connected before our CAS: keep it */
                st_rel(ks, victim_k);
                continue;
            }
            peer_fold(m, e);
            /* Held alone (KEY_WRITING, no pins): plain stores, published by the release below. */
            const Py_ssize_t c[] = {L->peer_msgs_sent, L->peer_msgs_recv, L->peer_bytes_sent, L->peer_bytes_recv,
                                    L->peer_errors, L->peer_ping_count, L->peer_ping_sum_ns, L->peer_ping_last_ns,
                                    L->peer_ping_min_ns, L->peer_events};
            for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) *U64(e + c[i]) = 0;
            memset(e + L->peer_bytes_sent_per_msg, 0, (size_t)(8 * L->msg_types));
            memset(e + L->peer_bytes_recv_per_msg, 0, (size_t)(8 * L->msg_types));
            st_rlx(x + L->pidx_life, 0);
            st_rlx(e + L->peer_era, 0);
            st_rlx(e + L->peer_connected_at, 0);
            st_rlx(e + L->peer_last_activity, 0);
            *(unsigned char *)(e + L->peer_addr_len) = 0;
            memset(e + L->peer_key, 0, (size_t)L->peer_cap);   /* readers take the key's bytes up to the first NUL */
        }
        st_rlx(x + L->pidx_idle, seq + 1);
        memcpy(e + L->peer_key, key, (size_t)n);
        *(unsigned char *)(e + L->peer_key_len) = (unsigned char)n;
        st_rel(ks, tag + KEY_PIN);   /* the entry and key before the word that publishes them, pinned once */
        peer_pin_held(L, m->shard, r);
        return e;
    }
    return NULL;
}

/* CAS-max of the entry's lifecycle word on its sequence number, so it holds the latest
 * lifecycle event whichever process recorded it, with the recording writer's shard (writer:
 * shard index + 1). Returns 1 if this event is now the latest. */
static int peer_life(const Layout *L, char *x, uint64_t seq, int connected, uint64_t writer) {
    uint64_t want = ((seq + 1) << LIFE_SEQ_SHIFT) | ((writer & 0x3FFF) << LIFE_WRITER_SHIFT) | (connected ? LIFE_CONNECTED : 0);
    char *lp = x + L->pidx_life;
    uint64_t cur = ld_acq(lp);
    while ((cur >> LIFE_SEQ_SHIFT) < (want >> LIFE_SEQ_SHIFT)) {
        if (__atomic_compare_exchange_n(U64(lp), &cur, want, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            if (!connected) st_rlx(x + L->pidx_idle, seq + 1);
            return 1;
        }
    }
    return 0;
}

static inline Py_ssize_t latency_bucket(const Layout *L, uint64_t ns) {
    if (ns <= 1) return 0;
    double b = ceil(log((double)ns) / L->log_gamma);
    if (b < 1) return 1;
    if (b > (double)(L->op_buckets - 1)) return L->op_buckets - 1;
    return (Py_ssize_t)b;
}

/* Everything an event adds beyond the ring and the shard counters: its peer's entry and, for a
 * timed operation, that operation's histogram in the bank of its clear generation. Relaxed
 * atomic adds: exact however many processes record, and no ordering is needed between them.
 *
 * Journaled, so a writer SIGKILLed half-way has them settled exactly once by the reaper, as its
 * shard counters are. Two halves:
 *   extras_plan   before the slot is published: finds (or inserts) the peer entry and the
 *                 operation, checks the generations, and stores what the adds will be in the
 *                 shard (jx_peer, jx_bank, jx_value, jx_info; jstep = 0) before the journal
 *                 says OWNED (or, for a lost event, EXTRAS): a journal past CLAIMED names them.
 *   extras_apply  after the outcome is decided and the journal says EXTRAS: the adds, in a fixed
 *                 order, jstep = i + 1 stored just before the i-th add, then the unpin. The reaper
 *                 (settle_extras) runs the same function from jstep on, from the words alone (the
 *                 slot may have been overwritten since), all but the unpin: it releases a pin the
 *                 dead writer still held afterwards, in any phase, as its "jpin" word says
 *                 (settle_pin). One instruction boundary stays ambiguous: a writer
 *                 killed between the store of jstep and its add loses that one add. The other
 *                 order (add, then jstep) would count it twice, and far more often: a signal is
 *                 taken at the boundary after an instruction in proportion to its cost, and a
 *                 locked add costs ~20 times a plain store (measured: 1 double count in 40
 *                 random SIGKILLs that way; see tests/test_capacity.py).
 * A latency sample goes only into a bank that names its generation (bank word "gen"): the
 * clearer marks a bank BANK_ZEROING (all ones) before zeroing it and names the new generation
 * after, so a writer stalled across two clears finds the bank of its parity naming another
 * generation and leaves it alone (the sample is counted in the shard, not in the histogram). */
#define JX_MSG (1ULL << 25)
#define JX_PING (1ULL << 26)
#define JX_COUNT (1ULL << 27)            /* the peer entry's counters are of this generation */
#define JX_UNTRACKED (1ULL << 28)        /* +1 peer_events_untracked */
#define JX_UNTRACKED_CONNECT (1ULL << 29) /* +1 peers_untracked */
#define JX_BUCKET_SHIFT 8
#define JX_BUCKET_MASK 0x7FFULL

static inline __attribute__((always_inline)) void extras_plan(Mapping *m, uint64_t gen, uint64_t base, uint64_t seq, long kind, long flags, int64_t value,
                        const char *peer, Py_ssize_t peer_n, const char *f1, Py_ssize_t f1_n, Py_ssize_t msg_t,
                        uint64_t *x_peer, uint64_t *x_bank, uint64_t *x_info) {
    const Layout *L = &m->L;
    char *mem = m->mem;
    uint64_t info = 0;
    *x_peer = *x_bank = 0;
    if (kind == L->kind_latency) {
        Py_ssize_t n = utf8_floor(f1, f1_n, L->op_name_size);
        char *ops = mem + L->ops_off;
        Py_ssize_t j = registry_find(ops + L->op_name_state, L->op_size, ops + L->op_name, L->op_size,
                                     L->op_slots - 1, f1, n);
        if (j < 0) j = L->op_slots - 1;
        char *bank = ops + j * L->op_size + L->op_banks + (Py_ssize_t)(gen & 1) * L->bank_size;
        Py_ssize_t bucket = (flags & L->flag_has_error) ? 0 : latency_bucket(L, (uint64_t)value);
        __builtin_prefetch(bank + L->bank_buckets + 8 * bucket, 1, 3);   /* with the gen word's line, not after it */
        if (ld_acq(bank + L->bank_gen) == gen) {
            *x_bank = (uint64_t)(bank - mem);
            info |= (uint64_t)bucket << JX_BUCKET_SHIFT;
        }
    }
    if (peer_n > 0) {
        /* The entry's line this event adds to beyond its first: the message type's bytes word,
         * or the ping and error counters. */
        Py_ssize_t hint = kind == L->kind_message && msg_t >= 0
            ? ((flags & L->flag_outbound) ? L->peer_bytes_sent_per_msg : L->peer_bytes_recv_per_msg) + 8 * msg_t
            : kind == L->kind_latency ? L->peer_ping_count : -1;
        char *e = peer_find(m, peer, peer_n, seq, hint);   /* pinned: see peer_find; unpinned by extras_apply */
        if (!e) {
            info |= JX_UNTRACKED;
            if (flags & L->flag_life_connect) info |= JX_UNTRACKED_CONNECT;
        } else {
            *x_peer = (uint64_t)(e - mem);
            int cur = peer_counters_current(L, e, base);
            if (cur < 0) info |= JX_UNTRACKED;
            if (cur > 0) {
                info |= JX_COUNT;
                if (kind == L->kind_message) {
                    info |= JX_MSG | (uint64_t)msg_t;   /* msg_t: the type's index, found by write() */
                } else if (kind == L->kind_latency && !(flags & L->flag_has_error) && f1_n == 4 &&
                           (memcmp(f1, "ping", 4) == 0 || memcmp(f1, "pong", 4) == 0)) {
                    info |= JX_PING;
                }
            }
        }
    }
    *x_info = info;
}

/* The adds of a planned event, from the from-th on. sh: the writer's shard, to store progress
 * in (NULL for the reaper). Returns 1 if the event became its peer's latest lifecycle event. */
static inline __attribute__((always_inline)) int extras_apply(Mapping *m, char *sh, uint64_t from, uint64_t seq, long sev, long flags, int64_t ts,
                        uint64_t peer_off, uint64_t bank_off, uint64_t value, uint64_t info,
                        uint64_t writer, const char *addr, Py_ssize_t addr_n) {
    const Layout *L = &m->L;
    char *mem = m->mem;
    uint64_t i = 0;
    int latest = 0;
/* An add, jstep = its number stored just before it; the add is a release RMW (add_rel), so the
 * store stays before it in the instruction stream, which is what a SIGKILL cuts. */
#define XOP(stmt) do {                                                                            \
        i++;                                                                                      \
        if (sh) st_rlx(sh + L->shard_jstep, i);                                                   \
        if (i > from) { stmt; }                                                                   \
    } while (0)
/* An idempotent op (max, min, plain store, lifecycle CAS-max): no step of its own, so the reaper
 * may redo it, harmlessly. */
#define IOP(stmt) do { i++; if (i > from) { stmt; } } while (0)
    if (bank_off) {
        char *bank = mem + bank_off;
        if (flags & L->flag_has_error) {
            XOP(add_rel(bank + L->bank_errors, 1));
        } else {
            XOP(add_rel(bank + L->bank_buckets + 8 * (Py_ssize_t)((info >> JX_BUCKET_SHIFT) & JX_BUCKET_MASK), 1));
            XOP(add_rel(bank + L->bank_sum_ns, value));
            IOP(max_rlx(bank + L->bank_max_ns, value));
            XOP(add_rel(bank + L->bank_count, 1));
        }
    }
    if (UNLIKELY(info & JX_UNTRACKED)) XOP(add_rel(mem + L->hdr_peer_events_untracked, 1));
    if (UNLIKELY(info & JX_UNTRACKED_CONNECT)) XOP(add_rel(mem + L->hdr_peers_untracked, 1));
    if (!peer_off) return 0;
    char *e = mem + peer_off;
    if (UNLIKELY(flags & (L->flag_life_connect | L->flag_life_disconnect)))
        IOP(latest = peer_life(L, peer_ix_of(m, e), seq, (flags & L->flag_life_connect) != 0, writer));
    if (UNLIKELY(latest && addr)) {
        /* The latest lifecycle event names the address, while the entry is pinned (a recycler
         * cannot take it under us). The reaper passes no text: the slot may be gone. */
        Py_ssize_t an = utf8_floor(addr, addr_n, L->addr_cap);
        memcpy(e + L->peer_addr, addr, (size_t)an);
        *(unsigned char *)(e + L->peer_addr_len) = (unsigned char)an;
        if (flags & L->flag_life_connect) st_rlx(e + L->peer_connected_at, (uint64_t)ts);
    }
    if (UNLIKELY(!(info & JX_COUNT))) goto unpin;
    XOP(add_rel(e + L->peer_events, 1));
    IOP(max_rlx(e + L->peer_last_activity, (uint64_t)ts));
    if (UNLIKELY(sev >= 3)) XOP(add_rel(e + L->peer_errors, 1));
    if (info & JX_MSG) {
        int out = (flags & L->flag_outbound) != 0;
        Py_ssize_t t = (Py_ssize_t)(info & 0xFF);
        XOP(add_rel(e + (out ? L->peer_msgs_sent : L->peer_msgs_recv), 1));
        XOP(add_rel(e + (out ? L->peer_bytes_sent : L->peer_bytes_recv), value));
        XOP(add_rel(e + (out ? L->peer_bytes_sent_per_msg : L->peer_bytes_recv_per_msg) + 8 * t, value));
    } else if (info & JX_PING) {
        XOP(add_rel(e + L->peer_ping_sum_ns, value));
        IOP(st_rlx(e + L->peer_ping_last_ns, value));
        IOP({
            char *mp = e + L->peer_ping_min_ns;   /* 0: no ping yet */
            uint64_t cur = ld_rlx(mp);
            while ((cur == 0 || value < cur) &&
                   !__atomic_compare_exchange_n(U64(mp), &cur, value, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
        });
        XOP(add_rel(e + L->peer_ping_count, 1));
    }
unpin:
    /* Last, a step of its own, the writer's only: release, so every add above comes before a
     * recycler's CAS can take the entry (see peer_find). The reaper (sh NULL) does not unpin
     * here: whether a dead writer still held its pin is its "jpin" word's to say, not jstep's
     * (settle_pin, called after this, releases it). */
    XOP(if (sh) peer_unpin_held(L, sh, peer_ix_of(m, e)));
#undef XOP
#undef IOP
    return latest;
}

/* ---- Mapping object ---------------------------------------------------------------------- */

/* Mapping(buffer, layout, readonly=False). A read-only Mapping takes a read-only buffer (an
 * mmap of PROT_READ) and offers only load and fence: everything that stores raises, so a reader
 * cannot write into the ring even by mistake (the page protection would make it a SIGSEGV). */
static int Mapping_init(Mapping *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"buffer", "layout", "readonly", NULL};
    PyObject *buf, *layout;
    int readonly = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OO!|p", kwlist, &buf, &PyDict_Type, &layout, &readonly)) return -1;
    if (self->mem) { PyErr_SetString(PyExc_RuntimeError, "Mapping already initialised"); return -1; }
    for (size_t i = 0; i < sizeof(layout_keys) / sizeof(layout_keys[0]); i++) {
        PyObject *v = PyDict_GetItemString(layout, layout_keys[i].name);
        if (!v) { PyErr_Format(PyExc_KeyError, "layout is missing %s", layout_keys[i].name); return -1; }
        Py_ssize_t x = PyLong_AsSsize_t(v);
        if (x == -1 && PyErr_Occurred()) return -1;
        if (x < 0) { PyErr_Format(PyExc_ValueError, "layout %s is negative", layout_keys[i].name); return -1; }
        *(Py_ssize_t *)((char *)&self->L + layout_keys[i].off) = x;
    }
    PyObject *lg = PyDict_GetItemString(layout, "log_gamma");
    if (!lg) { PyErr_SetString(PyExc_KeyError, "layout is missing log_gamma"); return -1; }
    self->L.log_gamma = PyFloat_AsDouble(lg);
    if (self->L.log_gamma == -1.0 && PyErr_Occurred()) return -1;
    if (!(self->L.log_gamma > 0)) { PyErr_SetString(PyExc_ValueError, "log_gamma must be positive"); return -1; }
    PyObject *keys = PyDict_GetItemString(layout, "checksum_keys");
    if (!keys || !PyBytes_Check(keys)) { PyErr_SetString(PyExc_KeyError, "layout is missing checksum_keys"); return -1; }
    const Layout *L = &self->L;
    self->nwords = L->slot_size / 8;
    if (L->slot_size % 8 || self->nwords > NWORDS_MAX || PyBytes_GET_SIZE(keys) != self->nwords * 8) {
        PyErr_SetString(PyExc_ValueError, "bad slot size or checksum keys");
        return -1;
    }
    memcpy(self->keys, PyBytes_AS_STRING(keys), (size_t)(self->nwords * 8));
    PyObject *order = PyDict_GetItemString(layout, "text_order");
    if (!order || !PyBytes_Check(order) || PyBytes_GET_SIZE(order) != 256 * 3) {
        PyErr_SetString(PyExc_KeyError, "layout is missing text_order (256 x 3 bytes)");
        return -1;
    }
    memcpy(self->order, PyBytes_AS_STRING(order), 256 * 3);
    for (int i = 0; i < 256; i++) {
        int seen = 0;
        for (int j = 0; j < 3; j++)
            if (self->order[i][j] >= 2 && self->order[i][j] <= 4) seen |= 1 << self->order[i][j];
        if (seen != 0x1C) { PyErr_SetString(PyExc_ValueError, "text_order must order 2, 3, 4 for each kind"); return -1; }
    }
    if (PyObject_GetBuffer(buf, &self->view, readonly ? PyBUF_SIMPLE : PyBUF_WRITABLE | PyBUF_SIMPLE) < 0) return -1;
    self->readonly = readonly;
    Py_ssize_t need_slots = L->slots_off + L->capacity * L->slot_size;
    Py_ssize_t need_shards = L->shards_off + L->max_shards * L->shard_size;
    Py_ssize_t need_peers = L->peers_off + L->peer_slots * L->peer_size;
    Py_ssize_t need_pindex = L->pindex_off + L->peer_slots * L->pidx_size;
    self->peer_shift = 0;
    while (self->peer_shift < 30 && ((Py_ssize_t)1 << self->peer_shift) < L->peer_size) self->peer_shift++;
    Py_ssize_t need_ops = L->ops_off + L->op_slots * L->op_size;
    if (L->capacity < 1 || need_slots > self->view.len || need_shards > self->view.len ||
        need_peers > self->view.len || need_pindex > self->view.len || need_pindex > L->peers_off ||
        ((Py_ssize_t)1 << self->peer_shift) != L->peer_size || L->pidx_size % 8 || L->pidx_size < 24 ||
        need_ops > self->view.len || L->op_slots < 1 || L->msg_types < 1 ||
        L->peer_slots < L->max_peers || L->op_buckets < 2 ||
        L->hdr_msg_state + 8 * L->msg_types > self->view.len || L->hdr_msg_name + L->msg_name_size * L->msg_types > self->view.len ||
        L->hdr_head + 8 > self->view.len || L->hdr_base_of + 8 * L->base_slots > self->view.len ||
        L->base_slots < 1 || L->seq_bits < 32 || L->seq_bits > 56 || L->run_max < 1 || L->run_max > L->capacity ||
        L->run_len_bits < 7 || L->run_max >= ((Py_ssize_t)1 << L->run_len_bits) || L->run_len_bits + L->seq_bits > 62 ||
        L->text_size > 255 || L->slot_text + L->text_size > L->slot_size ||
        L->sev_cont >= ((Py_ssize_t)1 << L->w_sev_bits) || L->event_slots_max < 1 || L->event_slots_max > 255 || L->event_slots_max > L->capacity ||
        L->event_slots_max >= ((Py_ssize_t)1 << L->run_len_bits) || L->cont_text < 1 ||
        L->cont_text_off + L->cont_text > L->slot_size || L->text_max > 65535 || L->stage_done > 255 ||
        L->cont_more + 6 > L->slot_size || L->cont_first + 8 > L->slot_size ||
        ((uintptr_t)self->view.buf) % 8) {
        PyBuffer_Release(&self->view);
        PyErr_SetString(PyExc_ValueError, "layout does not fit the buffer");
        return -1;
    }
    self->mem = self->view.buf;
    return 0;
}

static void clear_message(Mapping *self) {
    Py_CLEAR(self->msg_slow);
    Py_CLEAR(self->msg_tmpl);
    for (int i = 0; i < 2; i++) { Py_CLEAR(self->msg_flags[i]); Py_CLEAR(self->msg_dir[i]); }
}

/* Both routes (record_message's and span's): dropped at release and by the GC. */
static void clear_routes(Mapping *self) {
    clear_message(self);
    Py_CLEAR(self->span_slow);
    Py_CLEAR(self->span_failed);
    Py_CLEAR(self->span_tmpl);
}

static int Mapping_traverse(Mapping *self, visitproc visit, void *arg) {
    Py_VISIT(self->provider);
    Py_VISIT(self->msg_slow);
    Py_VISIT(self->span_slow);
    Py_VISIT(self->span_failed);
    return 0;
}

static int Mapping_clear(Mapping *self) {
    Py_CLEAR(self->provider);
    clear_routes(self);
    return 0;
}

static void Mapping_dealloc(Mapping *self) {
    PyObject_GC_UnTrack(self);
    batch_write(self);
    Mapping_clear(self);
    PyMem_RawFree(self->pf_map);
    PyMem_RawFree(self->bbuf);
    self->bbuf = self->bpos = NULL;
    self->pf_map = NULL;
    if (self->mem) { self->mem = NULL; PyBuffer_Release(&self->view); }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Mapping_set_provider(Mapping *self, PyObject *fn) {
    if (fn != Py_None && !PyCallable_Check(fn)) { PyErr_SetString(PyExc_TypeError, "provider must be callable"); return NULL; }
    if (fn != Py_None && self->readonly) { PyErr_SetString(ReadOnlyError, "a read-only mapping has no writer"); return NULL; }
    PyObject *old = self->provider;
    self->provider = fn == Py_None ? NULL : Py_NewRef(fn);
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

/* ---- warming a cold write ------------------------------------------------------------------
 *
 * In a tight loop a write finds every line it touches in L1. Inside a program that does real
 * work between two events (a crawler spends ~30 us on each message) those lines have left L1
 * and L2 by the next call, and the write then misses on them one after another: most addresses
 * come from a load before them (a layout field, then the shard word it locates), so the CPU
 * cannot overlap the misses itself. warm() asks for all the lines known before the event is
 * looked at -- this Mapping's layout, keys and run state, the shard's and header's hot lines,
 * the next slot -- with its first instructions, so their misses overlap one another. Prefetches
 * never fault and change no state; a line asked for and not used costs a little bandwidth. The
 * next slot is also asked for (for writing) at the end of each write: it is the one line that
 * usually comes from DRAM (a ring laps far less often than the cache turns over), and the time
 * until the next event hides that latency. */
static void set_hot(Mapping *self) {
    const Layout *L = &self->L;
    char *sh = self->shard;
    Py_ssize_t offs[] = {L->shard_journal, L->shard_recorded, L->shard_sev, L->shard_jstep, L->shard_jbefore_msg,
                         L->shard_jpin};
    int n = 0;
    for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]) && n < HOT_MAX - 1; i++) {
        char *line = (char *)((uintptr_t)(sh + offs[i]) & ~(uintptr_t)63);
        int seen = 0;
        for (int j = 0; j < n; j++) seen |= self->hot[j] == line;
        if (!seen) self->hot[n++] = line;
    }
    self->hot[n++] = self->mem + L->hdr_head;
    self->nhot = n;
}

static inline __attribute__((always_inline)) void prefetch_rec(const Mapping *self, const char *rec) {
    for (Py_ssize_t off = 0; off < self->L.slot_size; off += 64) __builtin_prefetch(rec + off, 1, 3);
    __builtin_prefetch(rec + self->L.slot_size - 1, 1, 3);
}

static inline __attribute__((always_inline)) void warm(Mapping *self) {
    /* The Mapping's own lines first: their addresses need no load. */
    for (size_t off = offsetof(Mapping, L); off < offsetof(Mapping, order); off += 64)
        __builtin_prefetch((char *)self + off, 0, 3);
    __builtin_prefetch((char *)self + offsetof(Mapping, bnext), 1, 3);
    __builtin_prefetch((char *)self + sizeof(Mapping) - 1, 1, 3);
    for (int i = 0; i < self->nhot; i++) __builtin_prefetch(self->hot[i], 1, 3);
    if (self->next_rec) {
        const char *r = self->next_rec;
        __builtin_prefetch(r, 1, 3); __builtin_prefetch(r + 64, 1, 3);
        __builtin_prefetch(r + 128, 1, 3); __builtin_prefetch(r + 192, 1, 3);
    }
}

/* Make sure this process has a shard, asking the Python provider for one if needed. */
static int ensure_shard(Mapping *self) {
    if (LIKELY(self->shard && self->shard_pid == g_pid)) return 0;
    if (self->provider) {
        PyObject *r = PyObject_CallNoArgs(self->provider);
        if (!r) return -1;
        Py_DECREF(r);
        if (!self->mem) { PyErr_SetString(ClosedError, "recorder is closed"); return -1; }
        if (self->shard && self->shard_pid == g_pid) return 0;
    }
    PyErr_SetString(NoShardError, "this process has no writer shard");
    return -1;
}

static int check_open(Mapping *self) {
    if (UNLIKELY(!self->mem)) { PyErr_SetString(ClosedError, "recorder is closed"); return -1; }
    return 0;
}

/* Open, and mapped for writing: checked by every operation that stores into the segment. */
static int check_writable(Mapping *self) {
    if (check_open(self)) return -1;
    if (UNLIKELY(self->readonly)) { PyErr_SetString(ReadOnlyError, "the ring is mapped read-only here (an inspector writes nothing)"); return -1; }
    return 0;
}

static PyObject *Mapping_release(Mapping *self, PyObject *unused) {
    /* Runs under the GIL, as does every write(): no write can be half-way through the memory. */
    batch_write(self);   /* what this process staged, while the ring is still mapped */
    if (self->mem) {
        self->mem = self->shard = self->staged_word = self->next_rec = NULL;
        self->nhot = 0;
        PyBuffer_Release(&self->view);
    }
    Py_CLEAR(self->provider);
    clear_routes(self);
    Py_RETURN_NONE;
}

static PyObject *Mapping_bind_shard(Mapping *self, PyObject *arg) {
    if (check_writable(self)) return NULL;
    if (arg == Py_None) { self->shard = self->staged_word = NULL; self->nhot = 0; Py_RETURN_NONE; }
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= self->L.max_shards) { PyErr_SetString(PyExc_IndexError, "shard index out of range"); return NULL; }
    self->shard = self->mem + self->L.shards_off + i * self->L.shard_size;
    self->staged_word = self->shard + self->L.shard_staged;
    self->shard_pid = g_pid;
    set_hot(self);
    Py_RETURN_NONE;
}

/* The first event of a new era (after a clear) zeroes the shard's counters; only the owning
 * process writes them, so plain stores suffice. Readers ignore a shard whose base is stale. */
static void sync_era(const Layout *L, char *sh, uint64_t base) {
    if (LIKELY(ld_rlx(sh + L->shard_base) == base)) return;
    const Py_ssize_t scalars[] = {L->shard_recorded, L->shard_overwritten, L->shard_lost, L->shard_abandoned,
                                  L->shard_expired, L->shard_first_ts, L->shard_last_ts};
    for (size_t i = 0; i < sizeof(scalars) / sizeof(scalars[0]); i++) st_rlx(sh + scalars[i], 0);
    for (int i = 0; i < 5; i++) st_rlx(sh + L->shard_sev + 8 * i, 0);
    for (Py_ssize_t i = 0; i < L->type_slots; i++) st_rlx(sh + L->shard_type_count + 8 * i, 0);
    for (Py_ssize_t i = 0; i < 2 * L->msg_types; i++) {
        st_rlx(sh + L->shard_msg_count + 8 * i, 0);
        st_rlx(sh + L->shard_msg_bytes + 8 * i, 0);
    }
    st_rel(sh + L->shard_base, base);
}

/* First sequence number of the era that a head word value belongs to. */
static inline uint64_t era_base(Mapping *m, uint64_t head) {
    uint64_t gen = head >> m->L.seq_bits;
    return ld_acq(m->mem + m->L.hdr_base_of + 8 * (Py_ssize_t)(gen % (uint64_t)m->L.base_slots));
}

static inline int64_t clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline int64_t now_ns(void) { return clock_ns(CLOCK_REALTIME); }

/* The clock of runs (see claim_run). The coarse clock costs a few ns where the fine one costs
 * ~20; it lags true time by at most its resolution, which readers add to RUN_TTL_NS. */
#ifdef CLOCK_MONOTONIC_COARSE
#define RUN_CLOCK CLOCK_MONOTONIC_COARSE
#else
#define RUN_CLOCK CLOCK_MONOTONIC
#endif

static inline int64_t mono_ns(void) { return clock_ns(RUN_CLOCK); }
static inline int64_t perf_ns(void) { return clock_ns(CLOCK_MONOTONIC); }   /* perf_counter_ns's clock */

/* ---- pre-faulting a writer's slots -------------------------------------------------------
 *
 * A process maps a page of the shared ring into its page tables the first time it touches it,
 * with a minor fault in the middle of write(). On a ring's first lap that fault also allocates
 * and zeroes the page: ~4 us per 4 KiB (17 slots) on this VM, for whichever process writes the
 * page first. Pages that exist already cost a process little: the first access (write() loads
 * the slot word before storing) is a read fault, and the kernel maps the 16 pages around it
 * (fault-around), writable, since shmem needs no write notification.
 *
 * So when a run enters a chunk of PF_CHUNK bytes this process has not pre-faulted yet, one
 * madvise(MADV_POPULATE_READ) populates the whole chunk: holes are allocated and mapped (~2.3 us
 * a page, not ~4), existing pages mapped with fault-around as a read would (~0.1 us a page).
 * MADV_POPULATE_WRITE was measured too: the same for holes, but one fault per existing page
 * (~0.5 us), so on a lapped ring it cost more than it saved. Populating changes no byte of
 * the ring (page tables only), so it is safe while other processes write the same pages. Only a
 * writer does it, from claim_run: a read-only Mapping never gets here, so an inspector maps
 * nothing it does not read. A kernel without it (before Linux 5.14: EINVAL) turns it off for
 * this Mapping; any other failure (ENOMEM, EFAULT: /dev/shm full) leaves that chunk to ordinary
 * faults, which raise SIGBUS as before. After fork the child's page tables start empty, and so
 * does its map. If a kernel mapped the populated pages read-only, the first store to each would
 * take a cheap write fault: still correct. */
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#define PF_CHUNK ((Py_ssize_t)1 << 20)

static __attribute__((noinline, cold)) void prefault_chunks(Mapping *self, Py_ssize_t c0, Py_ssize_t c1) {
    if (self->pf_off) return;
    if (!self->pf_map || self->pf_pid != g_pid) {
        if (!self->pf_map) {
            self->pf_chunks = (self->view.len + PF_CHUNK - 1) / PF_CHUNK;
            self->pf_map = PyMem_RawCalloc((size_t)self->pf_chunks, 1);
            if (!self->pf_map) { self->pf_off = 1; return; }
        } else {
            memset(self->pf_map, 0, (size_t)self->pf_chunks);
        }
        self->pf_pid = g_pid;
    }
    for (Py_ssize_t c = c0; c <= c1 && c < self->pf_chunks; c++) {
        if (self->pf_map[c]) continue;
        self->pf_map[c] = 1;
        Py_ssize_t off = c * PF_CHUNK, len = self->view.len - off;
        if (len > PF_CHUNK) len = PF_CHUNK;
        /* The mapping starts on a page boundary (mmap) and PF_CHUNK is a multiple of any page size;
         * the kernel rounds the length up within the mapping's last page. */
        if (madvise(self->mem + off, (size_t)len, MADV_POPULATE_READ) != 0 && (errno == EINVAL || errno == ENOSYS)) {
            self->pf_off = 1;
            return;
        }
    }
}

/* Pre-fault the chunks that slots [lo, lo + n) (seqs, taken modulo capacity) lie in, if needed. */
static inline void prefault_run(Mapping *self, uint64_t lo, uint64_t n) {
    const Layout *L = &self->L;
    uint64_t cap = (uint64_t)L->capacity;
    Py_ssize_t a = L->slots_off + (Py_ssize_t)(lo % cap) * L->slot_size;
    Py_ssize_t b = L->slots_off + (Py_ssize_t)((lo + n - 1) % cap) * L->slot_size + L->slot_size - 1;
    Py_ssize_t ca = a / PF_CHUNK, cb = b / PF_CHUNK;
    if (self->pf_map && self->pf_pid == g_pid && self->pf_map[ca] && self->pf_map[cb]) return;
    if (cb >= ca) {
        prefault_chunks(self, ca, cb);
    } else {   /* the run wraps around the end of the ring */
        prefault_chunks(self, ca, (L->slots_off + L->capacity * L->slot_size - 1) / PF_CHUNK);
        prefault_chunks(self, L->slots_off / PF_CHUNK, cb);
    }
}

/* Claim a new run of sequence numbers for this process: as many as it recorded in the last
 * run_ttl_ns, rounded down to a power of two, at most run_max.
 *
 * Readers (tail -f) must tell a sequence number that will never be written (the rest of a run
 * its writer gave up, or a dead writer's) from one still to come, without writing anything.
 * The shard says which run the process uses and when it claimed it: t0 is read, then the shard
 * says CLAIMING (release: t0 first), then the fetch_add (acq_rel), then the run itself. A
 * reader loads the head (acquire) before the shard words, so for any seq below that head it
 * sees this run's t0 with CLAIMING or the run itself — or a later run, which this process only
 * starts after it has finished with every seq it took from this one. A run is at least `need`
 * long (the slots of the event about to be written; at most event_slots_max < 2^run_len_bits). */
static void claim_run(Mapping *self, char *sh, uint64_t need) {
    const Layout *L = &self->L;
    int64_t t0 = mono_ns();
    if (t0 - self->win_start >= L->run_ttl_ns) {
        self->rate_n = t0 - self->win_start < 2 * L->run_ttl_ns ? self->win_count : 0;
        self->win_start = t0;
        self->win_count = 0;
    }
    uint64_t n = 1;
    while (n * 2 <= self->rate_n && n * 2 <= (uint64_t)L->run_max) n *= 2;
    if (n < need) n = need;   /* an event of several slots takes them all from one run */
    st_rlx(sh + L->shard_run_t0, (uint64_t)t0);
    st_rel(sh + L->shard_run, (uint64_t)L->run_claiming);
    uint64_t head = __atomic_fetch_add(U64(self->mem + L->hdr_head), n, __ATOMIC_ACQ_REL);
    uint64_t lo = head & (((uint64_t)1 << L->seq_bits) - 1);
    st_rel(sh + L->shard_run, ((lo + 2) << L->run_len_bits) | n);
    self->bhead = head;
    self->bbase = era_base(self, head);
    self->bnext = lo;
    self->bslot = lo % (uint64_t)L->capacity;
    self->bend = lo + n;
    self->bt0 = self->last_mono = t0;
    self->bshard = sh;
    self->bpid = g_pid;
    if (!self->pf_off) prefault_run(self, lo, n);
}

/* Give up the rest [from, bend) of this process's run: seqs it claimed and did not publish
 * (from may be a seq it took and put back). When nobody claimed after the run (the head still
 * ends it: always so with one writer), they go back to the head with one CAS, from (gen | end)
 * to (gen | from), and the next claim, by anyone, reuses them: a ring of N events holds N.
 * Otherwise they stay unused and are counted in the shard ("unused"), so the shortfall is known.
 *
 * Why a reader can never miss or repeat an event because of this. A give-back only removes
 * the top of the head, and only seqs no one ever published (the giver's unpublished tail, and
 * the head is exactly its end), so the head never again drops to or below a seq that was once
 * published: everything below a published seq stays claimed for good. The follower
 * (core/follow.py) therefore passes an unwritten seq as "never written" only when it has seen
 * a published record (committed, or deleted or overwritten after being committed) above it;
 * the unwritten seqs above the highest such record it waits at, without a timeout and without
 * counting them, since they may be given back and claimed again. So every give-back lowers the
 * head to at least the follower's cursor, and the seqs it returns, written later, are delivered
 * once. The shard stops naming the run (release) before the CAS (acq_rel), so a reader that
 * sees the lowered head and then the shard no longer finds the old run pending over seqs that
 * a new run of another process now holds. */
static __attribute__((noinline, cold)) void drop_run(Mapping *self, char *sh, uint64_t from) {
    const Layout *L = &self->L;
    uint64_t end = self->bend;
    self->bnext = end;
    if (self->bpid != g_pid || !sh || from >= end) return;   /* a forked child leaves the parent's run alone */
    /* The journal may name `from` (a seq taken and put back): once given back another process
     * can claim it, and a reaper settling this shard must not free that one's busy slot. The
     * event, not published and not counted yet, is then simply not recorded if this process
     * dies before its next claim. */
    st_rel(sh + L->shard_journal, 0);
    if (self->bshard == sh) st_rel(sh + L->shard_run, 0);
    uint64_t gmask = ~((((uint64_t)1) << L->seq_bits) - 1);
    uint64_t g = self->bhead & gmask;
    uint64_t expect = g | end;
    if (__atomic_compare_exchange_n(U64(self->mem + L->hdr_head), &expect, g | from, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
        return;
    if ((expect & gmask) != g) return;   /* cleared since: those seqs are below the new era's base */
    sync_era(L, sh, self->bbase);
    st_rel(sh + L->shard_unused, ld_rlx(sh + L->shard_unused) + (end - from));
}

/* A slot's checksum (layout.CHECKSUM_KEYS): the sum of word * key over its words, mod 2**64. For
 * 240-byte slots unrolled, with three sums in flight instead of one chain of 30 adds. */
static inline __attribute__((always_inline)) uint64_t slot_sum(const Mapping *m, const char *rec) {
    const uint64_t *w = (const uint64_t *)rec, *k = m->keys;
    if (m->nwords == 30) {
        uint64_t a = 0, b = 0, c = 0;
        for (int i = 0; i < 30; i += 3) {
            a += w[i] * k[i];
            b += w[i + 1] * k[i + 1];
            c += w[i + 2] * k[i + 2];
        }
        return a + b + c;
    }
    uint64_t sum = 0;
    for (Py_ssize_t i = 0; i < m->nwords; i++) sum += w[i] * k[i];
    return sum;
}

/* ---- events of several slots (layout.CONT) --------------------------------------------------
 *
 * Fit an event's five texts into at most `slots` slots: event_type and peer_id within their caps,
 * in the first slot; the free fields f1..f3 (text indices 2..4) up to text_max bytes together and
 * what `slots` slots hold, room going to them in the kind's order (self->order: the message's
 * fields, then the error, then the rest), each cut on a UTF-8 boundary. full[i]: what is kept of
 * field i; lens[i]: its first part, in the first slot (by the same order). Returns the slots the
 * kept text takes (<= slots); sets flag_truncated in *flags when anything was cut. */
static __attribute__((noinline)) Py_ssize_t fit_text(const Mapping *m, long kind, const char **tp, const Py_ssize_t *tn,
                                                     Py_ssize_t slots, unsigned char *lens, Py_ssize_t *full, long *flags) {
    const Layout *L = &m->L;
    const unsigned char *ord = m->order[kind & 255];
    Py_ssize_t n0 = utf8_floor(tp[0], tn[0], L->type_cap), n1 = utf8_floor(tp[1], tn[1], L->peer_cap);
    if (n0 < tn[0] || n1 < tn[1]) *flags |= L->flag_truncated;
    lens[0] = (unsigned char)n0; lens[1] = (unsigned char)n1;
    full[0] = n0; full[1] = n1;
    Py_ssize_t room = L->text_size - n0 - n1;
    Py_ssize_t cap = room + (slots - 1) * L->cont_text;
    if (cap > L->text_max) cap = L->text_max;
    for (;;) {
        Py_ssize_t budget = cap, r = room, more = 0;
        for (int j = 0; j < 3; j++) {
            int i = ord[j];
            Py_ssize_t n = utf8_floor(tp[i], tn[i], budget);
            if (n < tn[i]) *flags |= L->flag_truncated;
            full[i] = n;
            budget -= n;
        }
        for (int j = 0; j < 3; j++) {
            int i = ord[j];
            Py_ssize_t n = utf8_floor(tp[i], full[i], r);
            lens[i] = (unsigned char)n;
            r -= n;
            more += full[i] - n;
        }
        Py_ssize_t need = 1 + (more + L->cont_text - 1) / L->cont_text;
        if (need <= slots) return need;
        /* Cuts on UTF-8 boundaries left a few bytes of the first slot empty: keep a little less. */
        cap -= more - (slots - 1) * L->cont_text;
    }
}

/* Take the continuation slots seq+1 .. seq+nslots-1 (this process's run holds those seqs), one
 * CAS each from an older, non-busy word to BUSY (severity bits sev_cont: a continuation), as the
 * first slot was taken; stop at the first
 * that cannot be taken without waiting (a newer record or a busy one). Returns the slots the
 * event has (1 + continuations taken). *over counts the live events their CASes replaced.
 *
 * Unlike the first slot, a continuation may be taken after its run is older than run_ttl_ns (a
 * writer descheduled in the middle of a long event): a follower that already took its seq for
 * one never written loses nothing, since a continuation is never an event to it, and the event
 * itself is its first slot, taken in time and still busy, where the follower waits.
 *
 * For a reaper (core/shards.py, _settle_journal), before each CAS: "jprev" = the expected word,
 * "jmeta" = meta0 | ncont << 32 | k << 40 | *over << 48 (the CAS's release half orders them
 * before it), so if cont k is found BUSY, its CAS happened and jprev says what it replaced;
 * after the loop: stage_done with the count taken and the final *over. */
static __attribute__((noinline)) Py_ssize_t take_conts(Mapping *self, char *sh, uint64_t seq, Py_ssize_t nslots,
                                                       uint64_t base, uint64_t meta0, uint64_t *over) {
    const Layout *L = &self->L;
    uint64_t ncont = (uint64_t)(nslots - 1);
    Py_ssize_t k;
    for (k = 1; k < nslots; k++) {
        uint64_t s = seq + (uint64_t)k;
        char *wp = self->mem + L->slots_off + (Py_ssize_t)(s % (uint64_t)L->capacity) * L->slot_size + L->slot_w;
        uint64_t cur = ld_acq(wp);
        if (cur != 0 && (w_seq1(L, cur) >= s + 1 || w_state(L, cur) == (uint64_t)L->st_busy)) break;
        st_rlx(sh + L->shard_jprev, cur);
        st_rlx(sh + L->shard_jmeta, meta0 | (ncont << 32) | ((uint64_t)k << 40) | (*over << 48));
        if (!__atomic_compare_exchange_n(U64(wp), &cur, w_make(L, s, (unsigned)L->sev_cont, L->st_busy), 0, __ATOMIC_ACQ_REL,
                                         __ATOMIC_ACQUIRE))
            break;
        if (cur != 0 && w_state(L, cur) == (uint64_t)L->st_committed && w_seq1(L, cur) - 1 >= base &&
            w_seq1(L, cur) - 1 < s)
            (*over)++;
    }
    st_rlx(sh + L->shard_jmeta, meta0 | ((uint64_t)(k - 1) << 32) | ((uint64_t)L->stage_done << 40) | (*over << 48));
    return k;
}

/* Write and publish the ncont continuation slots of the event at seq (taken by take_conts): the
 * rest of f1, f2, f3 after their first parts (lens), one after the other, cont_text bytes per
 * slot; each slot checksummed like a record and published ST_CONT (severity bits sev_cont) with
 * a release store. */
static __attribute__((noinline)) void write_conts(Mapping *self, uint64_t seq, Py_ssize_t ncont,
                                                  const char **tp, const unsigned char *lens, const Py_ssize_t *full) {
    const Layout *L = &self->L;
    uint16_t more[3];
    for (int i = 0; i < 3; i++) more[i] = (uint16_t)(full[2 + i] - lens[2 + i]);
    int fi = 0;
    Py_ssize_t fpos = lens[2];
    for (Py_ssize_t k = 1; k <= ncont; k++) {
        uint64_t s = seq + (uint64_t)k;
        char *rec = self->mem + L->slots_off + (Py_ssize_t)(s % (uint64_t)L->capacity) * L->slot_size;
        *U64(rec + L->cont_first) = seq;
        memcpy(rec + L->cont_more, more, sizeof(more));
        *(unsigned char *)(rec + L->cont_index) = (unsigned char)k;
        *(unsigned char *)(rec + L->cont_count) = (unsigned char)ncont;
        *(unsigned char *)(rec + L->slot_kind) = (unsigned char)L->kind_cont;
        char *out = rec + L->cont_text_off;
        Py_ssize_t room = L->cont_text;
        while (room > 0 && fi < 3) {
            Py_ssize_t left = full[2 + fi] - fpos;
            if (left <= 0) {
                if (++fi < 3) fpos = lens[2 + fi];
                continue;
            }
            Py_ssize_t n = left < room ? left : room;
            memcpy(out, tp[2 + fi] + fpos, (size_t)n);
            out += n; room -= n; fpos += n;
        }
        uint64_t sum = slot_sum(self, rec);
        *U64(rec + L->slot_checksum) = sum;
        st_rel(rec + L->slot_w, w_make(L, s, (unsigned)L->sev_cont, L->st_cont));
    }
}

/* An int's value when it fits one digit (every flag, index and size the helpers pass), read from
 * the object without a call; 0: not such an int, ask PyLong_AsLong / PyLong_AsLongLong. */
static inline __attribute__((always_inline)) int small_int(PyObject *o, long *out) {
    if (!PyLong_CheckExact(o)) return 0;
#if PY_VERSION_HEX >= 0x030C0000
    if (!PyUnstable_Long_IsCompact((PyLongObject *)o)) return 0;
    *out = (long)PyUnstable_Long_CompactValue((PyLongObject *)o);
    return 1;
#else
    Py_ssize_t size = Py_SIZE(o);
    if (size < -1 || size > 1) return 0;
    *out = size * (long)((PyLongObject *)o)->ob_digit[0];
    return 1;
#endif
}

static inline __attribute__((always_inline)) int as_small(PyObject *o, long lo, long hi, const char *what, long *out) {
    long v;
    if (!small_int(o, &v)) {
        v = PyLong_AsLong(o);
        if (v == -1 && PyErr_Occurred()) return -1;
    }
    if (v < lo || v > hi) { PyErr_Format(PyExc_ValueError, "%s out of range: %ld", what, v); return -1; }
    *out = v;
    return 0;
}

static inline __attribute__((always_inline)) int as_i64(PyObject *o, int64_t *out) {
    long v;
    if (small_int(o, &v)) { *out = v; return 0; }
    long long x = PyLong_AsLongLong(o);
    if (x == -1 && PyErr_Occurred()) return -1;
    *out = x;
    return 0;
}

/* write()'s arguments, checked, as C values; a None where `holes` has bit i set is left as it
 * is in *t (a template's placeholder). */
static int parse_write(Mapping *self, PyObject *const *args, unsigned holes, Tmpl *t) {
    const Layout *L = &self->L;
#define HOLE(i) ((holes >> (i)) & 1u && args[i] == Py_None)
    if ((!HOLE(0) && as_small(args[0], 0, 255, "kind", &t->kind)) ||
        (!HOLE(1) && as_small(args[1], 0, 4, "severity", &t->sev)) ||
        (!HOLE(2) && as_small(args[2], 0, 255, "flags", &t->flags)) ||
        (!HOLE(3) && as_small(args[3], 0, L->type_slots - 1, "type index", &t->tidx)))
        return -1;
    if ((!HOLE(4) && as_i64(args[4], &t->ts)) || (!HOLE(5) && as_i64(args[5], &t->value))) return -1;
    for (int i = 0; i < 5; i++)
        if (!HOLE(6 + i) && get_text(args[6 + i], &t->tp[i], &t->tn[i])) return -1;
#undef HOLE
    return 0;
}

static PyObject *write_event(Mapping *self, long kind, long sev, long flags, long tidx, int64_t ts, int64_t value,
                             const char **tp, const Py_ssize_t *tn);

static PyObject *write_args(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 11) { PyErr_SetString(PyExc_TypeError, "write() takes 11 arguments"); return NULL; }
    if (check_writable(self)) return NULL;
    if (ensure_shard(self)) return NULL;
    if (self->nbatch && batch_flush(self)) return NULL;   /* after what this process staged */
    Tmpl t;
    if (parse_write(self, args, 0, &t)) return NULL;
    return write_event(self, t.kind, t.sev, t.flags, t.tidx, t.ts, t.value, t.tp, t.tn);
}

/* An event, its arguments checked; the writer is open and has its shard. */
static PyObject *write_event(Mapping *self, long kind, long sev, long flags, long tidx, int64_t ts, int64_t value,
                             const char **tp, const Py_ssize_t *tn) {
    const Layout *L = &self->L;
    if (ts == 0) ts = now_ns();
    flags &= ~L->flag_continued;   /* the writer's to set, when it writes continuations */

    /* Fit the five texts: in one slot when they fit as they are (every hot path), else in as
     * many as they need (fit_text). */
    unsigned char lens[5];
    Py_ssize_t full[5];
    Py_ssize_t nslots = 1;
    if (LIKELY(tn[0] <= L->type_cap && tn[1] <= L->peer_cap && tn[0] + tn[1] + tn[2] + tn[3] + tn[4] <= L->text_size)) {
        for (int i = 0; i < 5; i++) lens[i] = (unsigned char)tn[i];
    } else {
        nslots = fit_text(self, kind, tp, tn, L->event_slots_max, lens, full, &flags);
    }

    char *mem = self->mem, *sh = self->shard;
    uint64_t seq_mask = ((uint64_t)1 << L->seq_bits) - 1;
    /* A message's type, as an index of the ring's registry (named there if new; *other* when it
     * is full or the name too long): counted per shard by type and direction in step 7, and in
     * its peer's entry. In "jmeta" (index + 1, bits 56..63) from the first journal store on, with
     * its byte count in "jx_value", so a reaper counts it in any phase as the writer would. */
    Py_ssize_t msg_t = -1;
    if (L->metrics && kind == L->kind_message) {
        msg_t = tn[2] <= L->msg_name_size
            ? registry_find(mem + L->hdr_msg_state, 8, mem + L->hdr_msg_name, L->msg_name_size, L->msg_types - 1,
                            tp[2], tn[2])
            : -1;
        if (msg_t < 0) msg_t = L->msg_types - 1;
    }
    uint64_t mbits = (uint64_t)(msg_t + 1) << 56;
    st_rlx(sh + L->shard_jx_value, (uint64_t)value);   /* ordered before the journal by its release store */
    uint64_t head = 0, seq = 0, base = 0, cur = 0;
    uint64_t outcome = L->out_lost;
    char *rec = NULL, *wp = NULL;
    for (int attempt = 0; attempt < 4 && outcome == (uint64_t)L->out_lost; attempt++) {
        /* Take the next sequence number of this process's run, or claim a new run: when it is
         * used up, was claimed by another process (fork) or for another shard, is older than
         * run_ttl_ns (as of this process's last look at the clock), or belongs to an earlier
         * clear generation. The relaxed head load costs a cache miss only when another writer
         * claimed a run since, once per run. The generation check makes every event of a
         * generation's run carry a seq of that generation; an event racing the clear lands in
         * the old one, as it would had it claimed its seq just before the clear. */
        uint64_t h = ld_rlx(mem + L->hdr_head);
        if (UNLIKELY(self->bpid != g_pid || self->bshard != sh || self->bnext + (uint64_t)nslots > self->bend ||
                     (h >> L->seq_bits) != (self->bhead >> L->seq_bits) || self->last_mono - self->bt0 > L->run_ttl_ns)) {
            if (self->bnext < self->bend) drop_run(self, sh, self->bnext);
            claim_run(self, sh, (uint64_t)nslots);
        }
        self->win_count += (uint64_t)nslots;
        head = self->bhead;
        base = self->bbase;
        seq = self->bnext;
        uint64_t slot = self->bslot;
        self->bnext += (uint64_t)nslots;
        self->bslot += (uint64_t)nslots;   /* nslots <= event_slots_max <= capacity: one wrap at most */
        if (UNLIKELY(self->bslot >= (uint64_t)L->capacity)) self->bslot -= (uint64_t)L->capacity;
        sync_era(L, sh, base);
        st_rlx(sh + L->shard_jmeta, (uint64_t)tidx | ((uint64_t)sev << 8) | ((uint64_t)flags << 16) |
                                    ((uint64_t)(nslots - 1) << 32) | mbits);
        st_rlx(sh + L->shard_jts, (uint64_t)ts);
        st_rel(sh + L->shard_journal, j_make(L, seq, L->ph_claimed));

        rec = mem + L->slots_off + (Py_ssize_t)slot * L->slot_size;
        wp = rec + L->slot_w;
        cur = ld_acq(wp);
        int retry = 0;
        for (int t = 0; t < 8; t++) {
            /* Never wait. A busy slot (a writer still in it, perhaps stopped) drops this event,
             * counted as lost. A newer occupant means the ring went round while this run sat
             * unused: start a new run and try again. */
            if (UNLIKELY(cur != 0 && (w_seq1(L, cur) >= seq + 1 || w_state(L, cur) == (uint64_t)L->st_busy))) {
                /* ...unless the occupant names a sequence number nobody has claimed yet: that word
                 * is garbage (a corrupted segment), and waiting it out would lose this slot for good. */
                uint64_t claimed = ld_acq(mem + L->hdr_head) & seq_mask;
                if (w_seq1(L, cur) - 1 < claimed) {
                    retry = w_state(L, cur) != (uint64_t)L->st_busy || w_seq1(L, cur) >= seq + 1;
                    break;
                }
            }
            st_rlx(sh + L->shard_jprev, cur);   /* ordered before the CAS by its release half */
            if (LIKELY(__atomic_compare_exchange_n(U64(wp), &cur, w_make(L, seq, (unsigned)sev, L->st_busy), 0,
                                                   __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))) {
                /* The slot is ours. If the run is now older than run_ttl_ns, a reader may
                 * already have decided this seq will never be written: put the old word back
                 * (nothing else of the slot was touched) and take a seq of a new run. This check
                 * comes after the CAS, so a writer stopped between taking the seq and the CAS
                 * cannot slip a record in behind such a reader. */
                int64_t now = mono_ns();
                self->last_mono = now;
                if (UNLIKELY(now - self->bt0 > L->run_ttl_ns)) {
                    st_rel(wp, cur);
                    retry = 1;
                    break;
                }
                /* a live record of this era, older than ours (a garbage word is neither) */
                int was_live = cur != 0 && w_state(L, cur) == (uint64_t)L->st_committed && w_seq1(L, cur) - 1 >= base &&
                               w_seq1(L, cur) - 1 < seq;
                outcome = was_live ? L->out_overwrote : L->out_clean;
                break;
            }
        }
        if (LIKELY(!retry)) break;
        drop_run(self, sh, seq);   /* give up the rest of this run, this seq included */
    }
    /* Events replaced by this one's slots: 0 or 1 for an event of one slot. An event of several
     * takes its continuation slots now (take_conts), and if it could not take them all, its
     * text is fitted again into those it has. */
    uint64_t over = outcome == (uint64_t)L->out_overwrote;
    if (UNLIKELY(nslots > 1 && outcome != (uint64_t)L->out_lost)) {
        uint64_t meta0 = (uint64_t)tidx | ((uint64_t)sev << 8) | ((uint64_t)flags << 16) | mbits;
        Py_ssize_t got = take_conts(self, sh, seq, nslots, base, meta0, &over);
        if (got < nslots) {
            nslots = fit_text(self, kind, tp, tn, got, lens, full, &flags);
            flags |= L->flag_truncated;
        }
        if (nslots > 1) flags |= L->flag_continued;
        outcome = over ? L->out_overwrote : L->out_clean;
    }
    /* What the event will add to its peer and operation, in the shard before the journal moves
     * past CLAIMED (see extras_plan). */
    uint64_t x_peer = 0, x_bank = 0, x_info = 0;
    if (L->metrics) {
        extras_plan(self, head >> L->seq_bits, base, seq, kind, flags, value, tp[1], tn[1], tp[2], tn[2], msg_t,
                    &x_peer, &x_bank, &x_info);
        st_rlx(sh + L->shard_jx_peer, x_peer);
        st_rlx(sh + L->shard_jx_bank, x_bank);
        st_rlx(sh + L->shard_jx_info, x_info);
        st_rlx(sh + L->shard_jstep, 0);
    }
    if (LIKELY(outcome != (uint64_t)L->out_lost)) {
        st_rel(sh + L->shard_journal, j_make(L, seq, L->ph_owned));
        *I64(rec + L->slot_ts_ns) = ts;
        *I64(rec + L->slot_value) = value;
        *(uint32_t *)(rec + L->slot_pid) = (uint32_t)g_pid;
        *(unsigned char *)(rec + L->slot_severity) = (unsigned char)sev;
        *(unsigned char *)(rec + L->slot_kind) = (unsigned char)kind;
        *(unsigned char *)(rec + L->slot_flags) = (unsigned char)flags;
        memcpy(rec + L->slot_lens, lens, 5);
        char *text = rec + L->slot_text;
        for (int i = 0; i < 5; i++) {
            if (lens[i]) memcpy(text, tp[i], lens[i]);   /* a call into libc: not for an empty text */
            text += lens[i];
        }
        /* The continuations are published before the first slot (release stores, in order), so
         * a reader that sees the first slot committed finds them published or since replaced. */
        if (UNLIKELY(nslots > 1)) write_conts(self, seq, nslots - 1, tp, lens, full);
        /* The checksum covers every word but the slot word and itself, stale bytes included: a
         * reader that finds it wrong has a torn or foreign record and never returns it. */
        uint64_t sum = slot_sum(self, rec);
        *U64(rec + L->slot_checksum) = sum;
        st_rel(wp, w_make(L, seq, (unsigned)sev, L->st_committed));   /* publish */
    }
    /* The next event's slot, for writing, while this process does its other work (see warm). */
    if (LIKELY(self->bnext < self->bend)) {
        self->next_rec = mem + L->slots_off + (Py_ssize_t)self->bslot * L->slot_size;
        prefetch_rec(self, self->next_rec);
    } else {
        self->next_rec = NULL;
    }
    /* The outcome is decided (published, or lost): the peer and latency adds, step by step.
     * This jmeta lands before the journal says EXTRAS, so a writer killed in between is settled
     * as OWNED with it: its stage is STAGE_DONE (every slot taken), so the reaper takes "over"
     * as final and does not count jprev's occupant a second time. */
    st_rlx(sh + L->shard_jmeta, (uint64_t)tidx | ((uint64_t)sev << 8) | ((uint64_t)flags << 16) | (outcome << 24) |
                                ((uint64_t)(nslots - 1) << 32) | ((uint64_t)L->stage_done << 40) | (over << 48) | mbits);
    st_rel(sh + L->shard_journal, j_make(L, seq, L->ph_extras));
    if (L->metrics)
        extras_apply(self, sh, 0, seq, sev, flags, ts, x_peer, x_bank, (uint64_t)value, x_info,
                     (uint64_t)((sh - (mem + L->shards_off)) / L->shard_size) + 1, tp[2], lens[2]);

    /* Counting: old values into the journal first, so a reaper can redo "old + 1" exactly. */
    char *c_rec = sh + L->shard_recorded;
    char *c_out = outcome == (uint64_t)L->out_overwrote ? sh + L->shard_overwritten
                : outcome == (uint64_t)L->out_lost ? sh + L->shard_lost : NULL;
    char *c_sev = sh + L->shard_sev + 8 * sev;
    char *c_typ = sh + L->shard_type_count + 8 * tidx;
    uint64_t b_rec = ld_rlx(c_rec), b_out = c_out ? ld_rlx(c_out) : 0;
    uint64_t b_sev = ld_rlx(c_sev), b_typ = ld_rlx(c_typ);
    /* A message: its type's count and bytes, this direction (layout.MSG_DIRECTIONS). */
    char *c_mc = NULL, *c_mb = NULL;
    uint64_t b_mc = 0, b_mb = 0;
    if (msg_t >= 0) {
        Py_ssize_t k = 8 * (((flags & L->flag_outbound) ? L->msg_types : 0) + msg_t);
        c_mc = sh + L->shard_msg_count + k;
        c_mb = sh + L->shard_msg_bytes + k;
        b_mc = ld_rlx(c_mc);
        b_mb = ld_rlx(c_mb);
    }
    char *jb = sh + L->shard_jbefore;
    /* Fences (free on x86, barriers on weaker CPUs) for shard_counters' readers: the journal
     * stores before them are visible before the journal's old values are replaced, and the
     * COUNTING journal before any counter moves. */
    __atomic_thread_fence(__ATOMIC_RELEASE);
    st_rlx(jb, b_rec); st_rlx(jb + 8, b_out); st_rlx(jb + 16, b_sev); st_rlx(jb + 24, b_typ);
    if (c_mc) { st_rlx(sh + L->shard_jbefore_msg, b_mc); st_rlx(sh + L->shard_jbefore_msg + 8, b_mb); }
    st_rel(sh + L->shard_journal, j_make(L, seq, L->ph_counting));
    __atomic_thread_fence(__ATOMIC_RELEASE);
    if (L->metrics) {
        st_rlx(c_sev, b_sev + 1);
        st_rlx(c_typ, b_typ + 1);
        if (c_mc) { st_rlx(c_mc, b_mc + 1); st_rlx(c_mb, b_mb + (uint64_t)value); }
        int64_t first = (int64_t)ld_rlx(sh + L->shard_first_ts), last = (int64_t)ld_rlx(sh + L->shard_last_ts);
        if (UNLIKELY(b_rec == 0 || ts < first)) st_rlx(sh + L->shard_first_ts, (uint64_t)ts);
        if (b_rec == 0 || ts > last) st_rlx(sh + L->shard_last_ts, (uint64_t)ts);
    }
    if (c_out) st_rlx(c_out, b_out + (outcome == (uint64_t)L->out_lost ? 1 : over));
    st_rel(c_rec, b_rec + 1);
    st_rel(sh + L->shard_journal, 0);
    Py_RETURN_NONE;
}

/* write(kind, severity, flags, type_idx, ts_ns, value, event_type, peer_id, f1, f2, f3) -> None
 * (not the sequence number: no caller wants it, and an int above 256 is an allocation and a
 * free per event, ~5% of record_message).
 * ts_ns == 0 means "now". Every argument is converted before a sequence number is claimed, so a
 * bad argument raises and leaves no trace in the ring. */
static PyObject *Mapping_write(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    warm(self);
    return write_args(self, args, nargs);
}

/* A route's event: its template t with the call's flags, value, peer and f1 (the message type,
 * the operation). */
static inline __attribute__((always_inline)) PyObject *write_route(Mapping *self, const Tmpl *t, long flags, int64_t value,
                                                                  PyObject *peer, PyObject *f1) {
    if (check_writable(self) || ensure_shard(self)) return NULL;
    const char *tp[5] = {t->tp[0], NULL, NULL, t->tp[3], t->tp[4]};
    Py_ssize_t tn[5] = {t->tn[0], 0, 0, t->tn[3], t->tn[4]};
    if (get_text(peer, &tp[1], &tn[1]) || get_text(f1, &tp[2], &tn[2])) return NULL;
    return write_event(self, t->kind, t->sev, flags, t->tidx, t->ts, value, tp, tn);
}

/* ---- record_message in one native call -------------------------------------------------
 *
 * set_message(slow, template, (inbound_flags, outbound_flags), ("inbound", "outbound")):
 * message(peer_id, msg_type, direction, size) then writes the common case -- a non-empty str
 * peer, a str type, one of the two directions, a small non-negative int size -- as write(*t)
 * with template t's placeholders 2, 5, 7, 8 filled (flags, size, peer, type); anything else
 * (other types, keywords, errors to raise) goes to slow(...), the Python method, unchanged.
 * The Recorder binds it only when it logs nothing at DEBUG (the Python method's one extra). */
/* ---- batches (Recorder.set_batch) -------------------------------------------------------
 *
 * Inside a busy program a write costs what its cold lines cost (bench/results/crawler.md);
 * written in a row, the events of a batch find them warm. The routes stage their events in this
 * process's memory, and the shard's "staged" words count them per route. A write takes its
 * event out of "staged" just before write_event: a writer SIGKILLed between the two loses that
 * one event uncounted (the other order would count it twice: as staged, and by the journal);
 * killed anywhere else, the reaper counts what "staged" says as recorded and lost
 * (settle_staged). Events reach the ring in call order: anything else this process writes goes
 * after a flush. Other processes see them only once written. */
static void batch_write(Mapping *self) {
    int n = self->nbatch;
    self->nbatch = 0;
    self->bpos = self->bbuf;
    if (n == 0 || self->batch_pid != g_pid || !self->mem || !self->shard || self->shard_pid != g_pid) return;
    const char *pos = self->bbuf;
    for (int i = 0; i < n; i++) {
        const struct Staged *e = (const struct Staged *)pos;
        const char *text = (const char *)(e + 1);
        pos += (sizeof *e + e->n1 + e->n2 + 7) & ~(size_t)7;
        const Tmpl *t = e->route ? &self->span_t : &self->msg_t;
        const char *tp[5] = {t->tp[0], text, text + e->n1, t->tp[3], t->tp[4]};
        Py_ssize_t tn[5] = {t->tn[0], e->n1, e->n2, t->tn[3], t->tn[4]};
        st_rlx(self->staged_word + 8 * e->route, --self->staged[e->route]);
        PyObject *r = write_event(self, t->kind, t->sev, e->flags, t->tidx, e->ts, e->value, tp, tn);
        Py_XDECREF(r);   /* write_event cannot fail once the writer is open and has its shard */
    }
}

/* The batch is full, or its first event max_delay old: write it (out of line, as is everything
 * but staging itself, so that a staged call runs through as few code lines as it can). */
static __attribute__((noinline)) void batch_due(Mapping *self) {
    warm(self);
    batch_write(self);
}

/* Open, writable, with this process's shard: what staging needs, and has at every call but the
 * first (a bound staged_word means open, writable and a shard: bind_shard checked, release
 * clears it). */
static __attribute__((noinline)) int stage_shard(Mapping *self) {
    return check_writable(self) || ensure_shard(self) ? -1 : 0;
}

static int batch_flush(Mapping *self) {
    if (self->nbatch == 0) return 0;
    if (self->batch_pid != g_pid) {   /* a forked child's copy: the parent's to write, and count */
        self->nbatch = 0;
        self->bpos = self->bbuf;
        self->staged[0] = self->staged[1] = 0;
        return 0;
    }
    if (stage_shard(self)) return -1;
    batch_due(self);
    return 0;
}

/* Stage a route's event: 1 staged; 0 not staged (this process does not batch, or a text is too
 * long: the caller writes it at once, after a flush); -1 an error. `mono`: the caller's own
 * CLOCK_MONOTONIC reading at the event (a span's end), 0 if it has none. An event is stamped with
 * the wall clock; one with a reading gets it as that reading plus the batch's wall-minus-monotonic
 * offset, read with the batch's first event, and saves a clock read (~25 ns, a tenth of a span).
 * Both clocks run at the same NTP-slewed rate, so the two stamps differ only if the wall clock is
 * stepped during the batch: then a span's stamp keeps the old offset until the next batch
 * (max_delay at most), as an unbatched event stamped just before the step would. */
static inline __attribute__((always_inline)) int batch_stage(Mapping *self, int route, int flags, int64_t value,
                                                             PyObject *peer, PyObject *f1, int64_t mono) {
    if (!(self->batch_max > 0 && self->batch_pid == g_pid)) return 0;
    if (UNLIKELY(!self->staged_word || self->shard_pid != g_pid) && stage_shard(self)) return -1;
    const char *p1, *p2;
    Py_ssize_t n1, n2;
    if (UNLIKELY(get_text(peer, &p1, &n1) || get_text(f1, &p2, &n2))) return -1;
    if (UNLIKELY(n1 > STAGE_PEER || n2 > STAGE_F1)) return 0;
    int64_t ts;
    if (mono && self->nbatch) {
        ts = mono + self->batch_off;
    } else {
        ts = now_ns();
        if (self->nbatch == 0) { self->batch_t0 = ts; self->batch_off = ts - perf_ns(); }
    }
    self->nbatch++;
    struct Staged *e = (struct Staged *)self->bpos;
    char *text = (char *)(e + 1);
    e->route = (unsigned char)route; e->n1 = (unsigned char)n1; e->n2 = (unsigned char)n2;
    e->flags = flags; e->ts = ts; e->value = value;
    memcpy(text, p1, (size_t)n1);
    memcpy(text + n1, p2, (size_t)n2);
    self->bpos += (sizeof *e + (size_t)n1 + (size_t)n2 + 7) & ~(size_t)7;
    /* A store, not a load and a store: this line is cold at most calls, and a store waits for
     * nothing. The private count mirrors the word, which only this process writes. */
    st_rlx(self->staged_word + 8 * route, ++self->staged[route]);
    if (UNLIKELY(self->nbatch >= self->batch_max || ts - self->batch_t0 >= self->batch_delay_ns)) batch_due(self);
    return 1;
}

/* set_batch(events, delay_ns): stage up to `events` events of the routes (0: none, the default),
 * written at the latest at the first call `delay_ns` after the oldest; what is staged is written
 * first. */
static PyObject *Mapping_set_batch(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    long n;
    int64_t delay;
    if (nargs != 2 || !PyLong_Check(args[0]) || !PyLong_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "set_batch(events, delay_ns)");
        return NULL;
    }
    if (as_small(args[0], 0, BATCH_MAX, "batch size", &n) || as_i64(args[1], &delay)) return NULL;
    if (delay < 0) { PyErr_SetString(PyExc_ValueError, "delay_ns must be >= 0"); return NULL; }
    if (check_writable(self) || batch_flush(self)) return NULL;
    if (n > 0 && !self->bbuf) {   /* room for BATCH_MAX of the longest: one allocation, ever */
        self->bbuf = self->bpos = PyMem_RawMalloc(BATCH_MAX * STAGED_MAX);
        if (!self->bbuf) return PyErr_NoMemory();
    }
    self->batch_max = (int)n;
    self->batch_delay_ns = delay;
    self->batch_pid = g_pid;
    Py_RETURN_NONE;
}

/* flush(): write what is staged now. */
static PyObject *Mapping_flush(Mapping *self, PyObject *unused) {
    if (batch_flush(self)) return NULL;
    Py_RETURN_NONE;
}

/* flush_older(ns): write what is staged if the oldest is at least ns old (the idle flusher). */
static PyObject *Mapping_flush_older(Mapping *self, PyObject *arg) {
    int64_t ns;
    if (as_i64(arg, &ns)) return NULL;
    if (self->nbatch && now_ns() - self->batch_t0 >= ns && batch_flush(self)) return NULL;
    Py_RETURN_NONE;
}

/* settle_staged(shard, message_type_idx, latency_type_idx): a dead writer's staged events,
 * counted as recorded and lost (severity DEBUG, of their type) in its shard's counters of the
 * current era, then cleared. Only for the reaper, which owns the shard (REAPING). */
static PyObject *Mapping_settle_staged(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    long i, tm, tl;
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "settle_staged(shard, message_type, latency_type)"); return NULL; }
    if (check_writable(self)) return NULL;
    const Layout *L = &self->L;
    if (as_small(args[0], 0, L->max_shards - 1, "shard", &i) || as_small(args[1], 0, L->type_slots - 1, "type index", &tm) ||
        as_small(args[2], 0, L->type_slots - 1, "type index", &tl))
        return NULL;
    char *sh = self->mem + L->shards_off + i * L->shard_size;
    uint64_t s[2] = {ld_acq(sh + L->shard_staged), ld_acq(sh + L->shard_staged + 8)};
    if (s[0] == 0 && s[1] == 0) return PyLong_FromLong(0);
    sync_era(L, sh, era_base(self, ld_acq(self->mem + L->hdr_head)));
    uint64_t n = s[0] + s[1];
    st_rlx(sh + L->shard_lost, ld_rlx(sh + L->shard_lost) + n);
    if (L->metrics) {
        st_rlx(sh + L->shard_sev, ld_rlx(sh + L->shard_sev) + n);
        st_rlx(sh + L->shard_type_count + 8 * tm, ld_rlx(sh + L->shard_type_count + 8 * tm) + s[0]);
        st_rlx(sh + L->shard_type_count + 8 * tl, ld_rlx(sh + L->shard_type_count + 8 * tl) + s[1]);
    }
    st_rel(sh + L->shard_recorded, ld_rlx(sh + L->shard_recorded) + n);   /* last, as a writer's count */
    st_rlx(sh + L->shard_staged, 0);
    st_rlx(sh + L->shard_staged + 8, 0);
    return PyLong_FromUnsignedLongLong(n);
}

static PyObject *Mapping_set_message(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyCallable_Check(args[0]) || !PyTuple_CheckExact(args[1]) || PyTuple_GET_SIZE(args[1]) != 11 ||
        !PyTuple_CheckExact(args[2]) || PyTuple_GET_SIZE(args[2]) != 2 || !PyTuple_CheckExact(args[3]) ||
        PyTuple_GET_SIZE(args[3]) != 2 || !PyUnicode_CheckExact(PyTuple_GET_ITEM(args[3], 0)) ||
        !PyUnicode_CheckExact(PyTuple_GET_ITEM(args[3], 1))) {
        PyErr_SetString(PyExc_TypeError, "set_message(slow, 11-tuple, (flags_in, flags_out), (name_in, name_out))");
        return NULL;
    }
    if (check_writable(self)) return NULL;
    Tmpl t = {0};
    long fl[2];   /* flags are 0..255 */
    if (parse_write(self, PySequence_Fast_ITEMS(args[1]), 1u << 2 | 1u << 5 | 1u << 7 | 1u << 8, &t) ||
        as_small(PyTuple_GET_ITEM(args[2], 0), 0, 255, "flags", &fl[0]) ||
        as_small(PyTuple_GET_ITEM(args[2], 1), 0, 255, "flags", &fl[1]))
        return NULL;
    clear_message(self);
    self->msg_t = t;
    self->msg_flags_c[0] = (int)fl[0];
    self->msg_flags_c[1] = (int)fl[1];
    self->msg_slow = Py_NewRef(args[0]);
    self->msg_tmpl = Py_NewRef(args[1]);
    for (int i = 0; i < 2; i++) {
        self->msg_flags[i] = Py_NewRef(PyTuple_GET_ITEM(args[2], i));
        self->msg_dir[i] = Py_NewRef(PyTuple_GET_ITEM(args[3], i));
    }
    Py_RETURN_NONE;
}

/* A route's event not staged: written now, after what is staged (call order). Out of line, so
 * that a staged call runs through none of it. */
static __attribute__((noinline)) PyObject *route_now(Mapping *self, const Tmpl *t, long flags, int64_t value,
                                                     PyObject *peer, PyObject *f1) {
    if (self->nbatch && batch_flush(self)) return NULL;
    warm(self);   /* not for a staged event: it touches none of those lines */
    return write_route(self, t, flags, value, peer, f1);
}

/* Anything else: the Python method, which may drop the last reference to this mapping's route
 * (hold it). */
static __attribute__((noinline, cold)) PyObject *message_slow(Mapping *self, PyObject *const *args, Py_ssize_t nargs,
                                                              PyObject *kwnames) {
    if (!self->msg_slow) {
        if (check_writable(self)) return NULL;   /* closed: as write() says */
        PyErr_SetString(PyExc_TypeError, "message() has no route: call set_message first");
        return NULL;
    }
    PyObject *slow = Py_NewRef(self->msg_slow);
    PyObject *r = PyObject_Vectorcall(slow, args, (size_t)nargs, kwnames);
    Py_DECREF(slow);
    return r;
}

static PyObject *Mapping_message(Mapping *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    long size;
    if (LIKELY(self->msg_slow && nargs == 4 && !kwnames && PyUnicode_CheckExact(args[0]) &&
               PyUnicode_GET_LENGTH(args[0]) > 0 && PyUnicode_CheckExact(args[1]) && small_int(args[3], &size) &&
               size >= 0)) {
        /* The direction by identity first (literals are interned): no look into the object. */
        PyObject *dir = args[2];
        int d = dir == self->msg_dir[0] ? 0 : dir == self->msg_dir[1] ? 1
              : !PyUnicode_CheckExact(dir) ? -1
              : PyUnicode_Compare(dir, self->msg_dir[0]) == 0 ? 0 : PyUnicode_Compare(dir, self->msg_dir[1]) == 0 ? 1 : -1;
        if (LIKELY(d >= 0)) {
            int st = batch_stage(self, 0, self->msg_flags_c[d], size, args[0], args[1], 0);
            if (LIKELY(st > 0)) Py_RETURN_NONE;
            if (st < 0) return NULL;
            return route_now(self, &self->msg_t, self->msg_flags_c[d], size, args[0], args[1]);
        }
    }
    return message_slow(self, args, nargs, kwnames);
}

/* ---- span in native calls --------------------------------------------------------------
 *
 * set_span(slow, failed, template): span(op, peer_id="") returns a Span for a non-empty str op
 * and a str peer (anything else: slow(...), the Python method, which raises or returns its own
 * context manager). Span times its block with CLOCK_MONOTONIC (perf_counter_ns's clock) and on
 * a clean exit writes write(*template) with placeholders 5, 7, 8 filled (ns, peer, op); a block
 * that raised goes to failed(op, ns, peer, exc_type, exc), the Python method's own handling. */
typedef struct {
    PyObject_HEAD
    Mapping *m;
    PyObject *op, *peer;
    int64_t t0;
} Span;

/* Not tracked by the GC: a Span holds its Mapping and two exact strs, none of which can refer
 * back to it, so it is never part of a cycle -- and a span is allocated per timed block, where
 * GC tracking would cost its list stores and count toward the next young collection. */
static void Span_dealloc(Span *self) {
    Py_CLEAR(self->m);
    Py_CLEAR(self->op);
    Py_CLEAR(self->peer);
    PyObject_Free(self);
}

static PyObject *Span_enter(Span *self, PyObject *unused) {
    self->t0 = perf_ns();
    return Py_NewRef(self);
}

/* A clean block's event not staged: written now (route_now). */
static __attribute__((noinline)) PyObject *span_now(Span *self, int64_t ns) {
    Mapping *m = self->m;
    if (!m->span_tmpl) { if (check_writable(m)) return NULL; PyErr_SetString(PyExc_TypeError, "no span route"); return NULL; }
    PyObject *r = route_now(m, &m->span_t, m->span_t.flags, ns, self->peer, self->op);
    if (!r) return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static __attribute__((noinline, cold)) PyObject *span_raised(Span *self, int64_t ns, PyObject *const *args);

static PyObject *Span_exit(Span *self, PyObject *const *args, Py_ssize_t nargs) {
    int64_t t1 = perf_ns(), ns = t1 - self->t0;
    if (UNLIKELY(nargs != 3)) { PyErr_SetString(PyExc_TypeError, "__exit__ takes 3 arguments"); return NULL; }
    if (UNLIKELY(args[0] != Py_None)) return span_raised(self, ns, args);
    Mapping *m = self->m;
    int st = m->span_tmpl ? batch_stage(m, 1, m->span_flags_c, ns, self->peer, self->op, t1) : 0;
    if (LIKELY(st > 0)) Py_RETURN_FALSE;
    if (st < 0) return NULL;
    return span_now(self, ns);
}

/* A block that raised: the Python handler records it (as record_error does). */
static PyObject *span_raised(Span *self, int64_t ns, PyObject *const *args) {
    Mapping *m = self->m;
    PyObject *r;
    PyObject *nso = PyLong_FromLongLong(ns);
    if (!nso) return NULL;
    if (m->span_failed) {
        PyObject *fail = Py_NewRef(m->span_failed);
        PyObject *fargs[5] = {self->op, nso, self->peer, args[0], args[1]};
        r = PyObject_Vectorcall(fail, fargs, 5, NULL);
        Py_DECREF(fail);
    } else {
        r = check_writable(m) ? NULL : Py_NewRef(Py_None);   /* closed: as write() says */
    }
    Py_DECREF(nso);
    if (!r) return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyMethodDef Span_methods[] = {
    {"__enter__", (PyCFunction)Span_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))Span_exit, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SpanType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmdiag._native.Span",
    .tp_basicsize = sizeof(Span),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_dealloc = (destructor)Span_dealloc,
    .tp_doc = "Recorder.span's context manager: times its block, records it as a latency event.",
    .tp_methods = Span_methods,
};

static PyObject *Mapping_set_span(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3 || !PyCallable_Check(args[0]) || !PyCallable_Check(args[1]) || !PyTuple_CheckExact(args[2]) ||
        PyTuple_GET_SIZE(args[2]) != 11) {
        PyErr_SetString(PyExc_TypeError, "set_span(slow, failed, 11-tuple)");
        return NULL;
    }
    if (check_writable(self)) return NULL;
    Tmpl t = {0};
    if (parse_write(self, PySequence_Fast_ITEMS(args[2]), 1u << 5 | 1u << 8, &t)) return NULL;
    self->span_t = t;
    self->span_flags_c = (int)t.flags;
    Py_XSETREF(self->span_slow, Py_NewRef(args[0]));
    Py_XSETREF(self->span_failed, Py_NewRef(args[1]));
    Py_XSETREF(self->span_tmpl, Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

static PyObject *Mapping_span(Mapping *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    if (!self->span_slow) {
        if (check_writable(self)) return NULL;
        PyErr_SetString(PyExc_TypeError, "span() has no route: call set_span first");
        return NULL;
    }
    if ((nargs == 1 || nargs == 2) && !kwnames && PyUnicode_CheckExact(args[0]) && PyUnicode_GET_LENGTH(args[0]) > 0 &&
        (nargs == 1 || PyUnicode_CheckExact(args[1]))) {
        if (check_writable(self)) return NULL;
        Span *sp = PyObject_New(Span, &SpanType);
        if (!sp) return NULL;
        sp->m = (Mapping *)Py_NewRef(self);
        sp->op = Py_NewRef(args[0]);
        sp->peer = Py_NewRef(nargs == 2 ? args[1] : PyTuple_GET_ITEM(self->span_tmpl, 7));
        sp->t0 = 0;
        return (PyObject *)sp;
    }
    PyObject *slow = Py_NewRef(self->span_slow);
    PyObject *r = PyObject_Vectorcall(slow, args, (size_t)nargs, kwnames);
    Py_DECREF(slow);
    return r;
}

/* ---- word primitives for the slow paths (clear, reap, shard ownership, cleanup) ---------- */

static char *word_at(Mapping *self, PyObject *o) {
    if (check_open(self)) return NULL;
    Py_ssize_t off = PyLong_AsSsize_t(o);
    if (off == -1 && PyErr_Occurred()) return NULL;
    if (off < 0 || off % 8 || off + 8 > self->view.len) {
        PyErr_Format(PyExc_IndexError, "word offset %zd outside the segment", off);
        return NULL;
    }
    return self->mem + off;
}

static PyObject *Mapping_load(Mapping *self, PyObject *off) {
    char *p = word_at(self, off);
    return p ? PyLong_FromUnsignedLongLong(ld_acq(p)) : NULL;
}

static PyObject *Mapping_store(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "store(offset, value)"); return NULL; }
    if (check_writable(self)) return NULL;
    char *p = word_at(self, args[0]);
    if (!p) return NULL;
    uint64_t v = PyLong_AsUnsignedLongLong(args[1]);
    if (v == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    st_rel(p, v);
    Py_RETURN_NONE;
}

/* The (offset, expected, desired) of a CAS on a word of the segment (cas, give_back). */
static int cas_args(Mapping *self, PyObject *const *args, Py_ssize_t nargs, const char *usage, char **p,
                    uint64_t *e, uint64_t *d) {
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, usage); return -1; }
    if (check_writable(self) || !(*p = word_at(self, args[0]))) return -1;
    *e = PyLong_AsUnsignedLongLong(args[1]);
    if (*e == (uint64_t)-1 && PyErr_Occurred()) return -1;
    *d = PyLong_AsUnsignedLongLong(args[2]);
    if (*d == (uint64_t)-1 && PyErr_Occurred()) return -1;
    return 0;
}

static PyObject *Mapping_cas(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    char *p;
    uint64_t e, d;
    if (cas_args(self, args, nargs, "cas(offset, expected, desired)", &p, &e, &d)) return NULL;
    return PyBool_FromLong(__atomic_compare_exchange_n(U64(p), &e, d, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE));
}

static PyObject *Mapping_fetch_add(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "fetch_add(offset, delta)"); return NULL; }
    if (check_writable(self)) return NULL;
    char *p = word_at(self, args[0]);
    if (!p) return NULL;
    uint64_t d = PyLong_AsUnsignedLongLong(args[1]);
    if (d == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    return PyLong_FromUnsignedLongLong(__atomic_fetch_add(U64(p), d, __ATOMIC_ACQ_REL));
}

/* retire(slots, expected, state) -> how many slot words went from expected[i] to the same
 * sequence and severity in `state`. Used by retention cleanup (committed -> deleted): a record
 * rewritten since the caller looked fails its CAS and is left alone. */
static PyObject *Mapping_retire(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "retire(slots, expected, state)"); return NULL; }
    if (check_writable(self)) return NULL;
    const Layout *L = &self->L;
    Py_buffer sb, eb;
    if (PyObject_GetBuffer(args[0], &sb, PyBUF_SIMPLE) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &eb, PyBUF_SIMPLE) < 0) { PyBuffer_Release(&sb); return NULL; }
    long state = PyLong_AsLong(args[2]);
    Py_ssize_t n = sb.len / 8, done = 0;
    if ((state == -1 && PyErr_Occurred()) || sb.len % 8 || sb.len != eb.len) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "slots and expected must be equal-length uint64 buffers");
        PyBuffer_Release(&sb); PyBuffer_Release(&eb);
        return NULL;
    }
    const uint64_t *slots = sb.buf, *exp = eb.buf;
    uint64_t mask = ~(uint64_t)((1u << L->w_state_bits) - 1);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (slots[i] >= (uint64_t)L->capacity) continue;
        uint64_t e = exp[i];
        char *wp = self->mem + L->slots_off + (Py_ssize_t)slots[i] * L->slot_size + L->slot_w;
        if (__atomic_compare_exchange_n(U64(wp), &e, (exp[i] & mask) | (uint64_t)state, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            done++;
    }
    PyBuffer_Release(&sb); PyBuffer_Release(&eb);
    return PyLong_FromSsize_t(done);
}

/* new_era() -> base: start a new clear generation whose first sequence number is the current
 * head. The base is published in base_of before the CAS that makes the generation visible.
 * The window between load and CAS is a few instructions, so writers' fetch_adds rarely make
 * it retry; each retry means they made progress. */
static PyObject *Mapping_new_era(Mapping *self, PyObject *unused) {
    if (check_writable(self)) return NULL;
    const Layout *L = &self->L;
    char *hp = self->mem + L->hdr_head;
    uint64_t mask = ((uint64_t)1 << L->seq_bits) - 1;
    uint64_t cur = ld_acq(hp);
    for (;;) {
        uint64_t gen = ((cur >> L->seq_bits) + 1) & ((~(uint64_t)0) >> L->seq_bits);
        uint64_t base = cur & mask;
        st_rel(self->mem + L->hdr_base_of + 8 * (Py_ssize_t)(gen % (uint64_t)L->base_slots), base);
        if (__atomic_compare_exchange_n(U64(hp), &cur, (gen << L->seq_bits) | base, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return PyLong_FromUnsignedLongLong(base);
    }
}

/* add_expired(n): count records retired by this process's retention cleanup, in its own shard. */
static PyObject *Mapping_add_expired(Mapping *self, PyObject *arg) {
    if (check_writable(self)) return NULL;
    if (ensure_shard(self)) return NULL;
    uint64_t n = PyLong_AsUnsignedLongLong(arg);
    if (n == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    const Layout *L = &self->L;
    sync_era(L, self->shard, era_base(self, ld_acq(self->mem + L->hdr_head)));
    char *c = self->shard + L->shard_expired;
    st_rel(c, ld_rlx(c) + n);
    Py_RETURN_NONE;
}

static PyObject *Mapping_peer_update(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) { PyErr_SetString(PyExc_TypeError, "peer_update(peer_id, seq, connected, shard)"); return NULL; }
    if (check_writable(self)) return NULL;
    const char *p; Py_ssize_t n;
    if (get_text(args[0], &p, &n)) return NULL;
    uint64_t seq = PyLong_AsUnsignedLongLong(args[1]);
    if (seq == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    int c = PyObject_IsTrue(args[2]);
    if (c < 0) return NULL;
    Py_ssize_t shard = PyLong_AsSsize_t(args[3]);
    if (shard == -1 && PyErr_Occurred()) return NULL;
    if (shard < 0 || shard >= self->L.max_shards) { PyErr_SetString(PyExc_IndexError, "shard index out of range"); return NULL; }
    char *e = peer_find(self, p, n, seq, -1);
    if (e) {
        char *x = peer_ix_of(self, e);
        peer_life(&self->L, x, seq, c, (uint64_t)shard + 1);
        peer_unpin(&self->L, x);
    }
    return PyBool_FromLong(e != NULL);
}

/* shard_counters(out, owner_state_bits, reaping) -> how many shards could not be read
 * consistently. For every shard, copies SC_COLS words into the uint64 buffer `out`
 * (max_shards x SC_COLS): owner, base, journal, jmeta, jbefore[0], jbefore[1], recorded,
 * overwritten, lost, abandoned, expired, start_time, and 1 if the copy is consistent.
 *
 * Consistent means: one moment of the shard's history. Its owner writes the counters only in
 * the counting phase of an event, between journal = COUNTING and journal = 0, and "recorded"
 * last (release); a reaper only while the owner word says REAPING; a clear's zeroing only
 * under an older base. So the copy is taken as: journal, recorded, owner, base; the rest;
 * fence; journal, recorded, owner, base again: if those four are unchanged (and the shard is
 * not being reaped), no counting phase completed or started in between, and jbefore/jmeta are
 * the ones of the journal's event (see the fences in write()). A tight loop of loads, so a
 * writer recording millions of events a second is caught between two events within a few
 * tries. Loads only: works on a read-only mapping, and touches the shard table alone. */
#define SC_COLS 13
static PyObject *Mapping_shard_counters(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) { PyErr_SetString(PyExc_TypeError, "shard_counters(out, owner_state_bits, reaping)"); return NULL; }
    if (check_open(self)) return NULL;
    const Layout *L = &self->L;
    long sbits = PyLong_AsLong(args[1]);
    if (sbits == -1 && PyErr_Occurred()) return NULL;
    long reaping = PyLong_AsLong(args[2]);
    if (reaping == -1 && PyErr_Occurred()) return NULL;
    if (sbits < 1 || sbits > 16) { PyErr_SetString(PyExc_ValueError, "owner_state_bits out of range"); return NULL; }
    Py_buffer ob;
    if (PyObject_GetBuffer(args[0], &ob, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (ob.len != L->max_shards * SC_COLS * 8 || ((uintptr_t)ob.buf) % 8) {
        PyBuffer_Release(&ob);
        PyErr_SetString(PyExc_ValueError, "out must be a uint64 buffer of max_shards x 13");
        return NULL;
    }
    uint64_t *out = ob.buf;
    uint64_t smask = ((uint64_t)1 << sbits) - 1;
    Py_ssize_t bad = 0;
    for (Py_ssize_t i = 0; i < L->max_shards; i++) {
        char *sh = self->mem + L->shards_off + i * L->shard_size;
        uint64_t *o = out + i * SC_COLS;
        int ok = 0;
        for (int t = 0; t < 1000 && !ok; t++) {
            if (t) CPU_RELAX();
            uint64_t j1 = ld_acq(sh + L->shard_journal), r1 = ld_acq(sh + L->shard_recorded);
            uint64_t w1 = ld_acq(sh + L->shard_owner), b1 = ld_acq(sh + L->shard_base);
            o[0] = w1; o[1] = b1; o[2] = j1;
            o[3] = ld_acq(sh + L->shard_jmeta);
            o[4] = ld_acq(sh + L->shard_jbefore);
            o[5] = ld_acq(sh + L->shard_jbefore + 8);
            o[6] = r1;
            o[7] = ld_acq(sh + L->shard_overwritten);
            o[8] = ld_acq(sh + L->shard_lost);
            o[9] = ld_acq(sh + L->shard_abandoned);
            o[10] = ld_acq(sh + L->shard_expired);
            o[11] = ld_acq(sh + L->shard_start_time);
            __atomic_thread_fence(__ATOMIC_SEQ_CST);
            uint64_t j2 = ld_acq(sh + L->shard_journal), r2 = ld_acq(sh + L->shard_recorded);
            uint64_t w2 = ld_acq(sh + L->shard_owner), b2 = ld_acq(sh + L->shard_base);
            ok = j1 == j2 && r1 == r2 && w1 == w2 && b1 == b2 && (w1 & smask) != (uint64_t)reaping;
        }
        o[12] = (uint64_t)ok;
        bad += !ok;
    }
    PyBuffer_Release(&ob);
    return PyLong_FromSsize_t(bad);
}

/* The rest of this process's run, given up (drop_run): back to the head if nobody claimed after it. */
static void give_up_run(Mapping *self) {
    if (self->shard && self->shard_pid == g_pid && self->bnext < self->bend) drop_run(self, self->shard, self->bnext);
}

/* drop_run(): give up the rest of this process's run (give_back does it at close). */
static PyObject *Mapping_drop_run(Mapping *self, PyObject *unused) {
    if (check_writable(self)) return NULL;
    give_up_run(self);
    Py_RETURN_NONE;
}

/* give_back(owner_offset, active, exited) -> bool: this process is done with its shard. In one
 * native call, so that no other thread of the process (they need the GIL) writes in between:
 * what is staged is written and batching turned off, the rest of the run given back (drop_run),
 * the owner word CASed from active to exited, and the shard unbound. A thread that records
 * after this finds no shard and asks the provider, which refuses (ShardManager.release). As
 * separate calls from Python, another thread could write between the owner CAS and the
 * unbinding: into a shard already given back, which another process may be taking. */
static PyObject *Mapping_give_back(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    char *p;
    uint64_t e, d;
    if (cas_args(self, args, nargs, "give_back(owner_offset, active, exited)", &p, &e, &d)) return NULL;
    batch_write(self);
    self->batch_max = 0;
    give_up_run(self);
    int ok = __atomic_compare_exchange_n(U64(p), &e, d, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    self->shard = self->staged_word = NULL;
    self->nhot = 0;
    return PyBool_FromLong(ok);
}

/* settle_extras(shard, from_step): a reaper finishing a dead writer's peer and
 * latency adds from its journal words (see extras_apply). Words that do not name an entry of
 * the peer table or a bank of the operation table are not followed. */
static PyObject *Mapping_settle_extras(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) { PyErr_SetString(PyExc_TypeError, "settle_extras(shard, from_step)"); return NULL; }
    if (check_writable(self)) return NULL;
    const Layout *L = &self->L;
    Py_ssize_t i = PyLong_AsSsize_t(args[0]);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= L->max_shards) { PyErr_SetString(PyExc_IndexError, "shard index out of range"); return NULL; }
    uint64_t from = PyLong_AsUnsignedLongLong(args[1]);
    if (from == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    char *sh = self->mem + L->shards_off + i * L->shard_size;
    uint64_t j = ld_acq(sh + L->shard_journal);
    uint64_t meta = ld_acq(sh + L->shard_jmeta);
    uint64_t peer = ld_acq(sh + L->shard_jx_peer), bank = ld_acq(sh + L->shard_jx_bank);
    uint64_t info = ld_acq(sh + L->shard_jx_info), value = ld_acq(sh + L->shard_jx_value);
    int64_t ts = (int64_t)ld_acq(sh + L->shard_jts);
    long sev = (long)((meta >> 8) & 0xFF), flags = (long)((meta >> 16) & 0xFF);
    if (j == 0 || sev > 4) Py_RETURN_NONE;
    uint64_t seq = (j >> L->j_phase_bits) - 1;
    if (peer) {
        uint64_t lo = (uint64_t)L->peers_off, n = (uint64_t)L->peer_slots;
        if (peer < lo || (peer - lo) % (uint64_t)L->peer_size || (peer - lo) / (uint64_t)L->peer_size >= n) peer = 0;
    }
    if (bank) {
        uint64_t lo = (uint64_t)L->ops_off;
        uint64_t rel = bank - lo, op = rel / (uint64_t)L->op_size, in = rel % (uint64_t)L->op_size;
        if (bank < lo || op >= (uint64_t)L->op_slots || in < (uint64_t)L->op_banks ||
            (in - (uint64_t)L->op_banks) % (uint64_t)L->bank_size || (in - (uint64_t)L->op_banks) / (uint64_t)L->bank_size >= 2)
            bank = 0;
    }
    if (((info >> JX_BUCKET_SHIFT) & JX_BUCKET_MASK) >= (uint64_t)L->op_buckets || (info & 0xFF) >= (uint64_t)L->msg_types)
        Py_RETURN_NONE;
    extras_apply(self, NULL, from, seq, sev, flags, ts, peer, bank, value, info, (uint64_t)i + 1, NULL, 0);
    Py_RETURN_NONE;
}

/* settle_pin(shard) -> bool: a reaper releasing the peer pin a dead writer still held (its
 * shard's "jpin" word; see "Who holds a pin" above). The caller owns the shard alone (REAPING)
 * and has settled the writer's adds first (settle_extras): this release RMW comes after them, so
 * a recycler whose CAS reads the unpinned word sees every add, the dead writer's included (all
 * its stores were made before it died, and the reaper learnt of its death through the kernel).
 * Exactly one pin comes off: pins of live writers on the same entry are counted in the same word
 * and stay. "jpin" is cleared first, so a reaper killed here leaves the pin held (the safe side)
 * rather than let a later one take a second pin off. A word that is not ready with a pin (a
 * corrupt segment) is left alone. */
static PyObject *Mapping_settle_pin(Mapping *self, PyObject *arg) {
    if (check_writable(self)) return NULL;
    const Layout *L = &self->L;
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= L->max_shards) { PyErr_SetString(PyExc_IndexError, "shard index out of range"); return NULL; }
    char *sh = self->mem + L->shards_off + i * L->shard_size;
    uint64_t held = ld_acq(sh + L->shard_jpin);
    if (held == 0) Py_RETURN_FALSE;
    st_rel(sh + L->shard_jpin, 0);
    if (held > (uint64_t)L->peer_slots) Py_RETURN_FALSE;
    char *ks = peer_ix(self, held - 1) + L->pidx_key_state;
    uint64_t k = ld_acq(ks);
    while ((k & 3) == KEY_READY && (k & KEY_PINS_MASK) != 0) {
        if (__atomic_compare_exchange_n(U64(ks), &k, k - KEY_PIN, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyObject *Mapping_fence(Mapping *self, PyObject *unused) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    Py_RETURN_NONE;
}

/* ---- reader fast path: newest-first search and decoding (get_events) -------------------------
 *
 * The same reads and checks as core/reader.py's numpy path, one slot at a time and newest first,
 * so asking for the 100 newest events of a ring of millions touches a little over 100 slots and
 * makes no numpy call. What each kind stores and how it reads comes from core/kinds.py, handed
 * over once by set_decoder() (reader._native_table); the slot offsets come from this Mapping's
 * Layout (read_newest) and from layout.py through set_decoder (decode_slots, which has no segment).
 * The Python decoder (reader._decode_row) stays the reference: tests/test_decode_fast.py checks
 * that both give equal events. */

/* read_newest(n, min_severity, hi, floor, kind_max) -> bytes: the records of the (at most) n
 * highest sequence numbers in [floor, hi) that are retained, at or above min_severity and pass
 * every check of reader.copy_records, oldest first, slot_size bytes each. Never waits. */
static PyObject *Mapping_read_newest(Mapping *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) { PyErr_SetString(PyExc_TypeError, "read_newest(n, min_severity, hi, floor, kind_max)"); return NULL; }
    if (check_open(self)) return NULL;
    Py_ssize_t n = PyLong_AsSsize_t(args[0]);
    long min_sev = PyLong_AsLong(args[1]);
    unsigned long long hi = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long floor_ = PyLong_AsUnsignedLongLong(args[3]);
    long kind_max = PyLong_AsLong(args[4]);
    if (PyErr_Occurred()) return NULL;
    if (n < 0 || kind_max < 0 || kind_max > 255) { PyErr_SetString(PyExc_ValueError, "read_newest: bad n or kind_max"); return NULL; }
    const Layout *L = &self->L;
    const Py_ssize_t sz = L->slot_size, nw = self->nwords;
    const uint64_t cap = (uint64_t)L->capacity, smask = ((uint64_t)1 << L->w_sev_bits) - 1;
    char *slots = self->mem + L->slots_off;
    Py_ssize_t room = n < 128 ? n : 128, k = 0;
    char *buf = PyMem_Malloc((size_t)(room ? room : 1) * (size_t)sz);
    if (!buf) return PyErr_NoMemory();
    uint64_t rec[NWORDS_MAX];
    for (uint64_t seq = hi; seq > floor_ && k < n; ) {
        seq--;
        char *s = slots + (Py_ssize_t)(seq % cap) * sz;
        /* The seqlock read of core/reader.py: acquire-load the word (the writer's release store
         * of COMMITTED publishes the payload), copy, acquire fence, load the word again; take the
         * copy only if the word did not change and the copy holds that very word. */
        uint64_t w = ld_acq(s + L->slot_w);
        if (w == 0 || w_seq1(L, w) != seq + 1 || w_state(L, w) != (uint64_t)L->st_committed) continue;
        uint64_t sev = (w >> L->w_state_bits) & smask;
        if (sev > 4 || (long)sev < min_sev) continue;
        for (Py_ssize_t i = 0; i < nw; i++) rec[i] = __atomic_load_n(U64(s) + i, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (ld_rlx(s + L->slot_w) != w) continue;
        const unsigned char *r = (const unsigned char *)rec;
        uint64_t rw, ck;
        memcpy(&rw, r + L->slot_w, 8);
        memcpy(&ck, r + L->slot_checksum, 8);
        if (rw != w || r[L->slot_severity] != sev || r[L->slot_kind] > kind_max) continue;
        uint64_t sum = 0;   /* wraps mod 2**64, as the writer's (keys of w and checksum are 0) */
        for (Py_ssize_t i = 0; i < nw; i++) sum += rec[i] * self->keys[i];
        if (sum != ck) continue;
        const unsigned char *ln = r + L->slot_lens;
        if (ln[0] > L->type_cap || ln[1] > L->peer_cap || ln[0] + ln[1] + ln[2] + ln[3] + ln[4] > L->text_size) continue;
        if (k == room) {
            room *= 2;
            char *nb = PyMem_Realloc(buf, (size_t)room * (size_t)sz);
            if (!nb) { PyMem_Free(buf); return PyErr_NoMemory(); }
            buf = nb;
        }
        memcpy(buf + k * sz, rec, (size_t)sz);
        k++;
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, k * sz);
    if (out) {
        char *o = PyBytes_AS_STRING(out);
        for (Py_ssize_t i = 0; i < k; i++) memcpy(o + i * sz, buf + (k - 1 - i) * sz, (size_t)sz);  /* oldest first */
    }
    PyMem_Free(buf);
    return out;
}

#define DEC_FIELDS_MAX 16
#define DEC_PIECES_MAX 32
#define DEC_ATTRS 10   /* DiagnosticEvent's fields, in reader._native_table's order */

typedef struct {
    int src;                 /* 0..4: text field index; 5: the int64 value; 6: a flag bit */
    long when, flag;         /* present only when flags & when (0: always); the bit for src 6 */
    int json;
    PyObject *convert, *w0, *w1;   /* borrowed from the table (kept alive by D.table) */
} DField;

typedef struct {
    PyObject *event_type;    /* borrowed; NULL: the field etype_field */
    int nfields, npieces, nmeta, etype_field, meta_field, error_field;
    DField f[DEC_FIELDS_MAX];
    PyObject *lit[DEC_PIECES_MAX], *spec[DEC_PIECES_MAX];
    int pf[DEC_PIECES_MAX];
    PyObject *meta_key[DEC_FIELDS_MAX];
    int meta_idx[DEC_FIELDS_MAX];
} DKind;

static struct {
    PyObject *table;         /* the tuple set_decoder took: owns everything borrowed below */
    PyTypeObject *cls;
    PyObject *attr[DEC_ATTRS], *sev[8], *load_json, *bad, *noargs;
    int nsev;
    long f_cut, f_continued;  /* flags that mark an event truncated; F_CONTINUED */
    Py_ssize_t slot_size, text_size, o_w, o_ts, o_value, o_lens, o_sev, o_kind, o_flags, o_pid, o_text;
    int seq_shift;
    DKind kinds[256];
} D;

static int dec_index(PyObject *o, int lo, int hi, int *out) {
    long v = PyLong_AsLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < lo || v >= hi) { PyErr_Format(PyExc_ValueError, "decoder table: index %ld outside %d..%d", v, lo, hi - 1); return -1; }
    *out = (int)v;
    return 0;
}

/* set_decoder(table): see reader._native_table for its shape. */
static PyObject *set_decoder(PyObject *mod, PyObject *table) {
    PyObject *cls, *attrs, *sevs, *offs, *kinds;
    long f_cut, f_cont;
    int shift;
    Py_CLEAR(D.table);   /* decode_slots refuses until a whole table is in (D borrows from it) */
    if (!PyArg_ParseTuple(table, "O!O!O!OOO!illO!", &PyType_Type, &cls, &PyTuple_Type, &attrs, &PyTuple_Type, &sevs,
                          &D.load_json, &D.bad, &PyTuple_Type, &offs, &shift, &f_cut, &f_cont, &PyTuple_Type, &kinds))
        return NULL;
    if (PyTuple_GET_SIZE(attrs) != DEC_ATTRS || PyTuple_GET_SIZE(sevs) < 1 || PyTuple_GET_SIZE(sevs) > 8 ||
        PyTuple_GET_SIZE(kinds) != 256 || shift < 1 || shift > 16) {
        PyErr_SetString(PyExc_ValueError, "decoder table: bad shape");
        return NULL;
    }
    Py_ssize_t o[11];
    if (!PyArg_ParseTuple(offs, "nnnnnnnnnnn", &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10]))
        return NULL;
    D.slot_size = o[0]; D.text_size = o[1]; D.o_w = o[2]; D.o_ts = o[3]; D.o_value = o[4]; D.o_lens = o[5];
    D.o_sev = o[6]; D.o_kind = o[7]; D.o_flags = o[8]; D.o_pid = o[9]; D.o_text = o[10];
    if (D.slot_size < 1 || D.o_w + 8 > D.slot_size || D.o_ts + 8 > D.slot_size || D.o_value + 8 > D.slot_size ||
        D.o_lens + 5 > D.slot_size || D.o_pid + 4 > D.slot_size || D.o_sev >= D.slot_size || D.o_kind >= D.slot_size ||
        D.o_flags >= D.slot_size || D.text_size < 0 || D.o_text + D.text_size > D.slot_size) {
        PyErr_SetString(PyExc_ValueError, "decoder table: offsets outside the slot");
        return NULL;
    }
    for (int i = 0; i < DEC_ATTRS; i++) D.attr[i] = PyTuple_GET_ITEM(attrs, i);
    D.nsev = (int)PyTuple_GET_SIZE(sevs);
    for (int i = 0; i < D.nsev; i++) D.sev[i] = PyTuple_GET_ITEM(sevs, i);
    D.cls = (PyTypeObject *)cls;
    D.seq_shift = shift; D.f_cut = f_cut; D.f_continued = f_cont;
    for (int c = 0; c < 256; c++) {
        DKind *k = &D.kinds[c];
        PyObject *etype, *fields, *pieces, *meta;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(kinds, c), "OO!O!Oiii", &etype, &PyTuple_Type, &fields, &PyTuple_Type, &pieces,
                              &meta, &k->etype_field, &k->meta_field, &k->error_field))
            return NULL;
        k->event_type = etype == Py_None ? NULL : etype;
        k->nfields = (int)PyTuple_GET_SIZE(fields);
        k->npieces = (int)PyTuple_GET_SIZE(pieces);
        k->nmeta = meta == Py_None ? -1 : (PyTuple_Check(meta) ? (int)PyTuple_GET_SIZE(meta) : -2);
        if (k->nfields > DEC_FIELDS_MAX || k->npieces > DEC_PIECES_MAX || k->nmeta == -2 || k->nmeta > DEC_FIELDS_MAX ||
            k->etype_field >= k->nfields || k->meta_field >= k->nfields || k->error_field >= k->nfields ||
            (!k->event_type && k->etype_field < 0) || (k->nmeta < 0 && k->meta_field < 0)) {
            PyErr_Format(PyExc_ValueError, "decoder table: kind %d is malformed", c);
            return NULL;
        }
        for (int i = 0; i < k->nfields; i++) {
            DField *f = &k->f[i];
            PyObject *conv;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, i), "illpOOO", &f->src, &f->when, &f->flag, &f->json, &conv,
                                  &f->w0, &f->w1))
                return NULL;
            if (f->src < 0 || f->src > 6) { PyErr_SetString(PyExc_ValueError, "decoder table: bad field source"); return NULL; }
            f->convert = conv == Py_None ? NULL : conv;
        }
        for (int i = 0; i < k->npieces; i++) {
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(pieces, i), "UiU", &k->lit[i], &k->pf[i], &k->spec[i])) return NULL;
            if (k->pf[i] >= k->nfields) { PyErr_SetString(PyExc_ValueError, "decoder table: bad piece"); return NULL; }
        }
        for (int i = 0; i < k->nmeta; i++) {
            PyObject *key;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(meta, i), "Ui", &key, &k->meta_idx[i])) return NULL;
            if (dec_index(PyTuple_GET_ITEM(PyTuple_GET_ITEM(meta, i), 1), 0, k->nfields, &k->meta_idx[i])) return NULL;
            k->meta_key[i] = key;
        }
    }
    if (!D.noargs && !(D.noargs = PyTuple_New(0))) return NULL;
    Py_INCREF(table);
    Py_XSETREF(D.table, table);
    Py_RETURN_NONE;
}

/* Days since 1970-01-01 -> proleptic Gregorian date (H. Hinnant's civil_from_days). */
static void civil_from_days(int64_t z, int *y, int *m, int *d) {
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

static inline int64_t floordiv(int64_t a, int64_t b) { int64_t q = a / b; return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q; }

/* reader._EPOCH + timedelta(microseconds=ts_ns // 1000), built directly. */
static PyObject *dec_timestamp(int64_t ts_ns) {
    int64_t us = floordiv(ts_ns, 1000);
    int64_t days = floordiv(us, 86400000000LL), rest = us - days * 86400000000LL;
    int y, m, d;
    civil_from_days(days, &y, &m, &d);
    int64_t secs = rest / 1000000;
    return PyDateTimeAPI->DateTime_FromDateAndTime(y, m, d, (int)(secs / 3600), (int)(secs / 60 % 60), (int)(secs % 60),
                                                   (int)(rest % 1000000), PyDateTime_TimeZone_UTC, PyDateTimeAPI->DateTimeType);
}

/* One validated record -> a DiagnosticEvent, as reader._decode_row without continuation text
 * (a continued record reads its first slot alone, truncated); Py_None for a continued record
 * when skip_continued (the caller reads its continuations and decodes it in Python). */
static PyObject *decode_slot(const unsigned char *r, int skip_continued) {
    long flags = r[D.o_flags];
    if (skip_continued && (flags & D.f_continued)) Py_RETURN_NONE;
    const DKind *k = &D.kinds[r[D.o_kind]];
    unsigned sev = r[D.o_sev];
    if (sev >= (unsigned)D.nsev) { PyErr_Format(PyExc_IndexError, "severity %u out of range", sev); return NULL; }
    int64_t ts, value;
    uint64_t w;
    uint32_t pid;
    memcpy(&ts, r + D.o_ts, 8);
    memcpy(&value, r + D.o_value, 8);
    memcpy(&w, r + D.o_w, 8);
    memcpy(&pid, r + D.o_pid, 4);
    const char *text = (const char *)r + D.o_text;
    Py_ssize_t a[6];   /* the five fields' bounds, clamped as Python's slices clamp */
    a[0] = 0;
    for (int i = 0; i < 5; i++) a[i + 1] = a[i] + r[D.o_lens + i];
    for (int i = 0; i < 6; i++) if (a[i] > D.text_size) a[i] = D.text_size;
    PyObject *v[DEC_FIELDS_MAX] = {0}, *msg = NULL, *peer = NULL, *meta = NULL, *stamp = NULL, *ev = NULL;
    PyObject *vals[DEC_ATTRS] = {0}, *bits[2 * DEC_PIECES_MAX];
    int cut = (flags & D.f_cut) != 0, ok = 0, nbits = 0;
    for (int i = 0; i < k->nfields; i++) {
        const DField *f = &k->f[i];
        if (f->when && !(flags & f->when)) { v[i] = Py_NewRef(Py_None); continue; }
        if (f->src < 5) {
            const char *p = text + a[f->src];
            Py_ssize_t len = a[f->src + 1] - a[f->src];
            if (f->json) {
                PyObject *b = PyBytes_FromStringAndSize(p, len);
                if (!b) goto done;
                v[i] = PyObject_CallOneArg(D.load_json, b);
                Py_DECREF(b);
                if (v[i] == D.bad) { Py_SETREF(v[i], Py_NewRef(Py_None)); cut = 1; }
            } else {
                v[i] = PyUnicode_DecodeUTF8(p, len, "replace");
            }
        } else if (f->src == 5) {
            v[i] = PyLong_FromLongLong(value);
            if (v[i] && f->convert) Py_SETREF(v[i], PyObject_CallOneArg(f->convert, v[i]));
        } else {
            v[i] = Py_NewRef(flags & f->flag ? f->w1 : f->w0);
        }
        if (!v[i]) goto done;
    }
    /* the message: the kind's template, format(value, spec) per field as an f-string does */
    if (k->npieces == 1 && k->pf[0] >= 0 && PyUnicode_GET_LENGTH(k->lit[0]) == 0 && PyUnicode_GET_LENGTH(k->spec[0]) == 0
        && PyUnicode_CheckExact(v[k->pf[0]])) {
        msg = Py_NewRef(v[k->pf[0]]);
    } else {   /* the pieces, then one string of their total length (no list, no join) */
        for (int i = 0; i < k->npieces; i++) {
            if (PyUnicode_GET_LENGTH(k->lit[i])) bits[nbits++] = Py_NewRef(k->lit[i]);
            if (k->pf[i] >= 0 && !(bits[nbits++] = PyObject_Format(v[k->pf[i]], k->spec[i]))) goto done;
        }
        Py_ssize_t total = 0, at = 0;
        Py_UCS4 maxc = 127;
        for (int i = 0; i < nbits; i++) {
            total += PyUnicode_GET_LENGTH(bits[i]);
            if (PyUnicode_MAX_CHAR_VALUE(bits[i]) > maxc) maxc = PyUnicode_MAX_CHAR_VALUE(bits[i]);
        }
        if (!(msg = PyUnicode_New(total, maxc))) goto done;
        for (int i = 0; i < nbits; i++) {
            if (PyUnicode_CopyCharacters(msg, at, bits[i], 0, PyUnicode_GET_LENGTH(bits[i])) < 0) goto done;
            at += PyUnicode_GET_LENGTH(bits[i]);
        }
    }
    if (!(peer = PyUnicode_DecodeUTF8(text + a[1], a[2] - a[1], "replace"))) goto done;
    if (k->nmeta < 0) {
        meta = Py_NewRef(v[k->meta_field]);
    } else {
        if (!(meta = PyDict_New())) goto done;
        for (int i = 0; i < k->nmeta; i++)
            if (PyDict_SetItem(meta, k->meta_key[i], v[k->meta_idx[i]])) goto done;
    }
    if (!(stamp = dec_timestamp(ts))) goto done;
    vals[0] = Py_NewRef(k->event_type ? k->event_type : v[k->etype_field]);
    vals[1] = Py_NewRef(msg);
    vals[2] = Py_NewRef(D.sev[sev]);
    vals[3] = Py_NewRef(peer);
    vals[4] = Py_NewRef(meta);
    vals[5] = Py_NewRef(k->error_field >= 0 ? v[k->error_field] : Py_None);
    vals[6] = Py_NewRef(stamp);
    if (!(vals[7] = PyLong_FromUnsignedLong(pid))) goto done;
    if (!(vals[8] = PyLong_FromUnsignedLongLong((w >> D.seq_shift) - 1))) goto done;
    vals[9] = Py_NewRef(cut ? Py_True : Py_False);
    /* the dataclass's __init__ stores its arguments and nothing else (reader checks it has no
     * __post_init__): store them the same way, without running Python code */
    if (!(ev = D.cls->tp_new(D.cls, D.noargs, NULL))) goto done;
    for (int i = 0; i < DEC_ATTRS; i++)
        if (PyObject_GenericSetAttr(ev, D.attr[i], vals[i])) { Py_CLEAR(ev); goto done; }
    ok = 1;
done:
    for (int i = 0; i < k->nfields; i++) Py_XDECREF(v[i]);
    for (int i = 0; i < DEC_ATTRS; i++) Py_XDECREF(vals[i]);
    for (int i = 0; i < nbits; i++) Py_XDECREF(bits[i]);
    Py_XDECREF(msg); Py_XDECREF(peer); Py_XDECREF(meta); Py_XDECREF(stamp);
    return ok ? ev : NULL;
}

/* decode_slots(buffer, skip_continued=False) -> list of DiagnosticEvent (None for continued
 * records when skip_continued): every slot_size bytes of buffer, a validated record
 * (reader.copy_records or read_newest), as reader.decode_many without continuation text. */
static PyObject *decode_slots(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 1 || nargs > 2) { PyErr_SetString(PyExc_TypeError, "decode_slots(buffer, skip_continued=False)"); return NULL; }
    if (!D.table) { PyErr_SetString(PyExc_RuntimeError, "set_decoder() was not called"); return NULL; }
    int skip = nargs == 2 ? PyObject_IsTrue(args[1]) : 0;
    if (skip < 0) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    PyObject *out = NULL;
    if (view.len % D.slot_size) { PyErr_SetString(PyExc_ValueError, "buffer is not a whole number of slots"); goto end; }
    Py_ssize_t n = view.len / D.slot_size;
    if (!(out = PyList_New(n))) goto end;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *e = decode_slot((const unsigned char *)view.buf + i * D.slot_size, skip);
        if (!e) { Py_CLEAR(out); goto end; }
        PyList_SET_ITEM(out, i, e);
    }
end:
    PyBuffer_Release(&view);
    return out;
}

static PyObject *Mapping_closed(Mapping *self, void *unused) { return PyBool_FromLong(self->mem == NULL); }
static PyObject *Mapping_readonly(Mapping *self, void *unused) { return PyBool_FromLong(self->readonly); }

static PyMethodDef Mapping_methods[] = {
    {"write", (PyCFunction)(void (*)(void))Mapping_write, METH_FASTCALL, "Record one event (returns None)."},
    {"set_provider", (PyCFunction)Mapping_set_provider, METH_O, "Callable that binds a shard on demand."},
    {"set_message", (PyCFunction)(void (*)(void))Mapping_set_message, METH_FASTCALL,
     "Route for message(): the Python method, write()'s arguments, each direction's flags and name."},
    {"set_span", (PyCFunction)(void (*)(void))Mapping_set_span, METH_FASTCALL,
     "Route for span(): the Python method, the handler of a block that raised, write()'s arguments."},
    {"span", (PyCFunction)(void (*)(void))Mapping_span, METH_FASTCALL | METH_KEYWORDS,
     "span(op, peer_id='') as a native context manager (see set_span)."},
    {"set_batch", (PyCFunction)(void (*)(void))Mapping_set_batch, METH_FASTCALL, NULL},
    {"flush", (PyCFunction)Mapping_flush, METH_NOARGS, NULL},
    {"flush_older", (PyCFunction)Mapping_flush_older, METH_O, NULL},
    {"settle_staged", (PyCFunction)(void (*)(void))Mapping_settle_staged, METH_FASTCALL, NULL},
    {"message", (PyCFunction)(void (*)(void))Mapping_message, METH_FASTCALL | METH_KEYWORDS,
     "record_message(peer_id, msg_type, direction, size) in one native call (see set_message)."},
    {"bind_shard", (PyCFunction)Mapping_bind_shard, METH_O, "Use shard i for this process's counters."},
    {"release", (PyCFunction)Mapping_release, METH_NOARGS, "Drop the buffer; later calls raise."},
    {"load", (PyCFunction)Mapping_load, METH_O, "Acquire-load the u64 at a byte offset."},
    {"store", (PyCFunction)(void (*)(void))Mapping_store, METH_FASTCALL, "Release-store a u64 at a byte offset."},
    {"cas", (PyCFunction)(void (*)(void))Mapping_cas, METH_FASTCALL, "Compare-and-swap a u64; True on success."},
    {"fetch_add", (PyCFunction)(void (*)(void))Mapping_fetch_add, METH_FASTCALL, "Atomic add; returns the old value."},
    {"retire", (PyCFunction)(void (*)(void))Mapping_retire, METH_FASTCALL, "CAS slot words to another state."},
    {"peer_update", (PyCFunction)(void (*)(void))Mapping_peer_update, METH_FASTCALL, "Apply a lifecycle event, recorded by shard, to the peer table."},
    {"new_era", (PyCFunction)Mapping_new_era, METH_NOARGS, "Start a new clear generation; returns its base."},
    {"add_expired", (PyCFunction)Mapping_add_expired, METH_O, "Count n expired records in this process's shard."},
    {"shard_counters", (PyCFunction)(void (*)(void))Mapping_shard_counters, METH_FASTCALL,
     "Copy every shard's counters, each at one moment of its history (loads only)."},
    {"fence", (PyCFunction)Mapping_fence, METH_NOARGS, "Full memory fence (between reader copies)."},
    {"drop_run", (PyCFunction)Mapping_drop_run, METH_NOARGS, "Give up the rest of this process's run (give_back does, at close)."},
    {"give_back", (PyCFunction)(void (*)(void))Mapping_give_back, METH_FASTCALL,
     "give_back(owner_offset, active, exited) -> bool: write the batch, give up the run, mark the shard exited and unbind it, in one call."},
    {"settle_pin", (PyCFunction)Mapping_settle_pin, METH_O,
     "settle_pin(shard) -> bool: release the peer pin a dead writer of that shard still held (its jpin word)."},
    {"settle_extras", (PyCFunction)(void (*)(void))Mapping_settle_extras, METH_FASTCALL,
     "Finish a dead writer's peer and latency adds from step from_step on."},
    {"read_newest", (PyCFunction)(void (*)(void))Mapping_read_newest, METH_FASTCALL,
     "The newest retained records of [floor, hi) that pass the reader's checks (bytes, oldest first)."},
    {NULL},
};

static PyGetSetDef Mapping_getset[] = {
    {"closed", (getter)Mapping_closed, NULL, "True once released.", NULL},
    {"readonly", (getter)Mapping_readonly, NULL, "True if mapped without write access (load and fence only).", NULL},
    {NULL},
};

static PyTypeObject MappingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmdiag._native.Mapping",
    .tp_basicsize = sizeof(Mapping),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)Mapping_traverse,
    .tp_clear = (inquiry)Mapping_clear,
    .tp_doc = "A shared-memory ring segment seen through real atomics.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Mapping_init,
    .tp_dealloc = (destructor)Mapping_dealloc,
    .tp_methods = Mapping_methods,
    .tp_getset = Mapping_getset,
};

static PyObject *set_closed_error(PyObject *mod, PyObject *cls) {
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, (PyTypeObject *)PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError, "expected an exception class");
        return NULL;
    }
    Py_INCREF(cls);
    Py_XSETREF(ClosedError, cls);
    Py_RETURN_NONE;
}

static PyObject *set_readonly_error(PyObject *mod, PyObject *cls) {
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, (PyTypeObject *)PyExc_Exception)) {
        PyErr_SetString(PyExc_TypeError, "expected an exception class");
        return NULL;
    }
    Py_INCREF(cls);
    Py_XSETREF(ReadOnlyError, cls);
    Py_RETURN_NONE;
}

/* run_clock_slack_ns() -> how far the clock of runs may lag CLOCK_MONOTONIC (its resolution). */
static PyObject *run_clock_slack_ns(PyObject *mod, PyObject *unused) {
    struct timespec res;
    if (clock_getres(RUN_CLOCK, &res) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLongLong((long long)res.tv_sec * 1000000000LL + res.tv_nsec);
}

static PyMethodDef module_methods[] = {
    {"set_closed_error", set_closed_error, METH_O, "Exception class raised by a released Mapping."},
    {"set_readonly_error", set_readonly_error, METH_O, "Exception class raised by a store through a read-only Mapping."},
    {"run_clock_slack_ns", run_clock_slack_ns, METH_NOARGS, "How far the clock of runs may lag CLOCK_MONOTONIC."},
    {"set_decoder", set_decoder, METH_O, "The event kinds table decode_slots reads records with (reader._native_table)."},
    {"decode_slots", (PyCFunction)(void (*)(void))decode_slots, METH_FASTCALL, "Decode validated records into DiagnosticEvents."},
    {NULL},
};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "shmdiag._native", NULL, -1, module_methods,
                                       NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__native(void) {
    g_pid = getpid();
    pthread_atfork(NULL, NULL, after_fork_child);
    if (PyType_Ready(&MappingType) < 0 || PyType_Ready(&SpanType) < 0) return NULL;
    PyDateTime_IMPORT;
    if (!PyDateTimeAPI) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    NoShardError = PyErr_NewException("shmdiag._native.NoShard", PyExc_RuntimeError, NULL);
    ClosedError = PyExc_ValueError;
    Py_INCREF(ClosedError);
    ReadOnlyError = PyExc_PermissionError;
    Py_INCREF(ReadOnlyError);
    Py_INCREF(&MappingType);
    if (PyModule_AddObject(m, "Mapping", (PyObject *)&MappingType) < 0 ||
        PyModule_AddObject(m, "NoShard", NoShardError) < 0)
        return NULL;
    Py_INCREF(NoShardError);
    return m;
}
