"""The load generator's P2P traffic profile, as data: what a Bitcoin node's diagnostics look like.

Where the numbers come from:

* **Payload sizes** (bytes after the 24-byte message header) follow from the wire format in the
  Bitcoin developer reference and the BIPs that define each message: ``version`` is 85 fixed bytes
  plus a var_str user agent ("/Satoshi:27.0.0/" makes 102; longer agents and comments up to 126
  are common); ``ping``/``pong`` carry an 8-byte nonce (BIP 31); ``feefilter`` an 8-byte fee rate
  (BIP 133); ``sendcmpct`` a bool and an 8-byte version (BIP 152); ``verack``, ``sendaddrv2``
  (BIP 155), ``wtxidrelay`` (BIP 339), ``getaddr`` and ``sendheaders`` are empty. Messages with a
  list are a compactsize count (1 byte below 253 entries, 3 up to 65,535) plus fixed-size entries:
  ``inv``/``getdata`` 36 bytes each (type + hash: one entry is 37 bytes), ``headers`` 81 (an
  80-byte header and a zero tx count; 81*n+1), ``addr`` 30 (up to MAX_ADDR_TO_SEND = 1000 entries:
  30,003 bytes at most), ``addrv2`` 13 (IPv4), 25 (IPv6) or 41 (Tor v3) per entry (BIP 155),
  ``getheaders`` a locator of up to MAX_LOCATOR_SZ = 101 hashes. Limits are Bitcoin Core's
  (``net_processing.cpp``: MAX_ADDR_TO_SEND, MAX_LOCATOR_SZ, MAX_HEADERS_RESULTS = 2000;
  ``policy.h``: MIN_STANDARD_TX_NONWITNESS_SIZE = 65, MAX_STANDARD_TX_WEIGHT = 400,000).
* **tx** sizes are lognormal with a 250-byte median and a long tail (most transactions are one
  or two inputs and outputs, 200-400 bytes; consolidations reach tens of kB); **block** is 1-2 MB,
  the size of recent mainnet blocks; **cmpctblock** is a header, a nonce, 6-byte short ids for
  1,500-5,000 transactions and a prefilled coinbase (BIP 152).
* **Weights** of the message mix are not a measurement: they are round numbers with the well-known
  shape of a relaying node's traffic (``getpeerinfo``'s per-message counters): inv/getdata/tx are
  most messages, headers/cmpctblock/block follow one block per ~10 minutes, addr relay comes in
  bursts. Errors are a few percent of events, most of them harmless (a slow peer, a corrupt
  message), a few ending the connection.
* **Pings**: Bitcoin Core pings every peer every 2 minutes (PING_INTERVAL); the load generator pings
  every few seconds so that every peer soon has a ping time. Round trips are lognormal around 80 ms.

Everything here is plain data plus two small samplers; the load generator (``_loadgen``) turns it
into processes and events. Changing a number here changes the load, nothing else.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from shmdiag.core.models import Severity

MAX_PROTOCOL_MESSAGE_LENGTH = 4_000_000  # Bitcoin Core's cap on one message's payload


@dataclass(frozen=True)
class Size:
    """How a message's payload size is drawn. Every draw is within [lo, hi].

    ``dist`` is ``"fixed"`` (lo), ``"uniform"`` (lo..hi), ``"lognormal"`` (``median``, ``sigma``,
    clamped to lo..hi) or ``"list"``: ``extra`` fixed bytes + a compactsize count + n entries of
    ``item`` bytes (one of ``item`` per message), n uniform in ``common`` or, with probability
    ``rare_share``, in ``rare``.
    """

    lo: int
    hi: int
    dist: str = "fixed"
    median: float = 0.0
    sigma: float = 0.0
    item: tuple[int, ...] = ()
    extra: int = 0
    common: tuple[int, int] = (1, 1)
    rare: tuple[int, int] = (1, 1)
    rare_share: float = 0.0


def compactsize_len(n: int) -> int:
    return 1 if n < 253 else 3 if n <= 0xFFFF else 5


def _list(item: tuple[int, ...], common: tuple[int, int], rare: tuple[int, int] | None = None,
          rare_share: float = 0.0, extra: int = 0) -> Size:
    """A list message's Size, with lo/hi worked out from the entry counts it can draw."""
    nmin = min(common[0], rare[0]) if rare else common[0]
    nmax = max(common[1], rare[1]) if rare else common[1]
    lo = extra + compactsize_len(nmin) + min(item) * nmin
    hi = extra + compactsize_len(nmax) + max(item) * nmax
    return Size(lo, hi, "list", item=item, extra=extra, common=common, rare=rare or common, rare_share=rare_share)


SIZES: dict[str, Size] = {
    # handshake (BIPs 14, 133, 152, 155, 339)
    "version": Size(102, 126, "uniform"),
    "verack": Size(0, 0),
    "sendaddrv2": Size(0, 0),
    "wtxidrelay": Size(0, 0),
    "sendcmpct": Size(9, 9),
    "feefilter": Size(8, 8),
    # keep-alive (BIP 31)
    "ping": Size(8, 8),
    "pong": Size(8, 8),
    # transaction relay: inv/getdata of 1-5 entries, now and then a big batch (up to 1000)
    "inv": _list((36,), (1, 5), (6, 1000), 0.05),
    "getdata": _list((36,), (1, 5), (6, 1000), 0.05),
    "tx": Size(65, 400_000, "lognormal", median=250.0, sigma=0.9),
    # block relay: one header announced; a 2000-header batch when a peer catches up
    "headers": _list((81,), (1, 1), (2, 2000), 0.02),
    "getheaders": _list((32,), (25, 35), (1, 101), 0.05, extra=4 + 32),  # version + locator + stop hash
    "cmpctblock": _list((6,), (1500, 5000), extra=80 + 8 + 1 + 250),  # header, nonce, coinbase prefilled
    "block": Size(1_000_000, 2_000_000, "uniform"),
    # address relay: unsolicited relays of up to 10 addresses, or a getaddr reply of up to 1000
    "addr": _list((30,), (1, 10), (11, 1000), 0.1),
    "addrv2": _list((13, 25, 41), (1, 10), (11, 1000), 0.1),
    "getaddr": Size(0, 0),
}


def draw_size(msg_type: str, rng: random.Random) -> int:
    """One payload size for ``msg_type``, from its documented distribution."""
    s = SIZES[msg_type]
    if s.dist == "fixed":
        return s.lo
    if s.dist == "uniform":
        return rng.randint(s.lo, s.hi)
    if s.dist == "lognormal":
        return min(s.hi, max(s.lo, round(rng.lognormvariate(math.log(s.median), s.sigma))))
    lo, hi = s.rare if rng.random() < s.rare_share else s.common
    n = rng.randint(lo, hi)
    return s.extra + compactsize_len(n) + rng.choice(s.item) * n


# -- the connection handshake -------------------------------------------------------------------
# An outbound connection's handshake as Bitcoin Core runs it: version both ways; wtxidrelay and
# sendaddrv2 must come between version and verack (BIPs 339, 155); sendcmpct and feefilter after.
HANDSHAKE: tuple[tuple[str, str], ...] = (
    ("outbound", "version"), ("inbound", "version"),
    ("outbound", "wtxidrelay"), ("outbound", "sendaddrv2"), ("outbound", "verack"),
    ("inbound", "wtxidrelay"), ("inbound", "sendaddrv2"), ("inbound", "verack"),
    ("outbound", "sendcmpct"), ("inbound", "sendcmpct"),
    ("outbound", "feefilter"), ("inbound", "feefilter"),
)
CONNECT_REFUSED_SHARE = 0.08  # connection attempts that fail (error "connect", no connection)
HANDSHAKE_FAIL_SHARE = 0.03  # connections dropped after the peer's version (too old)
CONNECT_ERROR = ("connect", "[Errno 111] Connection refused")
HANDSHAKE_ERROR = ("handshake", "incompatible version 60001 (minimum 70016)", "obsolete version")


# -- steady traffic -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Msg:
    """A message type in the steady mix: relative weight, share received, burst length."""

    weight: float
    inbound: float = 0.5
    burst: tuple[int, int] = (1, 1)  # consecutive messages of this type from one peer


MESSAGE_MIX: dict[str, Msg] = {
    "inv": Msg(36, 0.55),
    "getdata": Msg(10, 0.45),
    "tx": Msg(30, 0.6),
    "headers": Msg(0.8, 0.6),
    "getheaders": Msg(0.3, 0.5),
    "cmpctblock": Msg(0.3, 0.8),
    "block": Msg(0.1, 0.9),
    "addr": Msg(0.3, 0.7, burst=(1, 4)),
    "addrv2": Msg(0.8, 0.7, burst=(1, 4)),
    "getaddr": Msg(0.05, 0.5),
    "feefilter": Msg(0.2, 0.5),
}


# -- what happens at each step of a peer's steady state (relative weights) ----------------------
STEP_MIX: dict[str, float] = {
    "message": 97.3,  # one message (or an addr burst), from MESSAGE_MIX
    "error": 2.5,  # one of ERRORS
    "disconnect": 0.1,  # a clean disconnection, one of DISCONNECT_REASONS
    "event": 0.1,  # one of NODE_EVENTS through record_event
}
# ``python -m shmdiag demo``'s node: the same, but its peers err about once per 2,000 messages
# rather than once per 40 (loadgen's mix exercises the error path; the demo shows a node whose
# health says what a real one's would: refused connections alone give a warning).
DEMO_STEP_MIX: dict[str, float] = {**STEP_MIX, "error": 0.05}


@dataclass(frozen=True)
class ErrorKind:
    """A peer error: operation, error text, relative weight, and the disconnect reason if the
    node drops the peer for it (None: the connection survives)."""

    operation: str
    text: str
    weight: float
    disconnect: str | None = None


ERRORS: dict[str, ErrorKind] = {
    "timeout": ErrorKind("getdata", "timeout: tx not delivered within 60 s", 40),
    "bad_checksum": ErrorKind("read", "bad checksum in 'tx' message", 25),
    "bad_magic": ErrorKind("read", "bad magic 0x0b110907 (expected 0xf9beb4d9)", 4, "bad magic"),
    "remote_closed": ErrorKind("read", "connection closed by remote peer", 6, "remote closed"),
    "oversized": ErrorKind("read", "oversized message (4000001 bytes)", 1, "misbehaving"),
    "send_timeout": ErrorKind("write", "timeout: send buffer full for 20 min", 1, "timeout"),
}
SHUTDOWN_REASON = "shutdown"  # a writer that stops cleanly disconnects its peers with this
DISCONNECT_REASONS: dict[str, float] = {
    "inactivity timeout": 3,
    "evicted: inbound slots full": 3,
    "stale tip": 2,
    "peer requested": 2,
}


@dataclass(frozen=True)
class NodeEvent:
    """A generic event (record_event) a node writes about a peer now and then."""

    event_type: str
    message: str
    severity: Severity
    weight: float


NODE_EVENTS: tuple[NodeEvent, ...] = (
    NodeEvent("block_connected", "block {height} connected", Severity.INFO, 6),
    NodeEvent("tx_rejected", "tx rejected: min relay fee not met", Severity.DEBUG, 3),
    NodeEvent("misbehaving", "peer sent unrequested block", Severity.WARNING, 1),
)


# -- pings ---------------------------------------------------------------------------------------
PING_INTERVAL = (2.0, 5.0)  # seconds between our pings to a peer (uniform); Core uses 120 s
RTT = Size(0, 0, "lognormal", median=0.080, sigma=0.6)  # seconds; clamped to RTT_BOUNDS
RTT_BOUNDS = (0.001, 20.0)


def draw_rtt(rng: random.Random) -> float:
    """One ping round trip, in seconds."""
    return min(RTT_BOUNDS[1], max(RTT_BOUNDS[0], rng.lognormvariate(math.log(RTT.median), RTT.sigma)))


# -- addresses -----------------------------------------------------------------------------------
PORT = 8333
IPV6_SHARE = 0.2  # the rest are IPv4; documentation ranges (RFC 5737, RFC 3849)


def draw_address(rng: random.Random) -> str:
    if rng.random() < IPV6_SHARE:
        return f"[2001:db8::{rng.randrange(1, 0xFFFF):x}:{rng.randrange(1, 0xFFFF):x}]:{PORT}"
    net = rng.choice(("192.0.2", "198.51.100", "203.0.113"))
    return f"{net}.{rng.randrange(1, 255)}:{PORT}"
