"""The Bitcoin P2P wire format, as much of it as a crawler needs.

Message framing (24-byte header: magic, command, payload length, checksum), compact sizes,
``version``, ``addr``/``addrv2`` (BIP155), ``inv``/``getdata``, ``getheaders``/``headers``,
``ping``/``pong``. Pure functions on bytes, no I/O: ``tests/test_crawler_wire.py`` checks them
against known byte strings (the genesis block header, the protocol documentation's version
message). Reference: https://en.bitcoin.it/wiki/Protocol_documentation and BIP155.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from dataclasses import dataclass, field

MAGIC = {
    "main": bytes.fromhex("f9beb4d9"),
    "testnet": bytes.fromhex("0b110907"),
    "regtest": bytes.fromhex("fabfb5da"),
    "signet": bytes.fromhex("0a03cf40"),
}
# The genesis block of each network, as the first (and only) locator of a first getheaders.
GENESIS = {
    "main": "000000000019d6689c085ae165831e934ff763ae46a2a6c172b3f1b60a8ce26f",
    "testnet": "000000000933ea01ad0ee984209779baaec3ced90fa3f408719526f8d77f4943",
    "regtest": "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206",
    "signet": "00000008819873e925422c1ff0f99f7cc9bbb232af63a077a480a3633bee1ef6",
}
DEFAULT_PORT = {"main": 8333, "testnet": 18333, "regtest": 18444, "signet": 38333}

HEADER_SIZE = 24
# Bitcoin Core's MAX_PROTOCOL_MESSAGE_LENGTH: a header announcing more is refused before its payload.
MAX_PAYLOAD = 4_000_000
PROTOCOL_VERSION = 70016
NODE_NETWORK = 1
NODE_WITNESS = 1 << 3

MSG_TX, MSG_BLOCK, MSG_WITNESS_BLOCK = 1, 2, 0x40000002

_IPV4_PREFIX = b"\x00" * 10 + b"\xff\xff"


class WireError(Exception):
    """Bytes that are not a valid message; ``kind`` names the fault for error records."""

    kind = "malformed"


class BadMagic(WireError):
    kind = "bad magic"


class BadChecksum(WireError):
    kind = "bad checksum"


class Oversized(WireError):
    kind = "oversized"


class Truncated(WireError):
    kind = "truncated"


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def checksum(payload: bytes) -> bytes:
    return sha256d(payload)[:4]


# -- framing ---------------------------------------------------------------------------------

def frame(magic: bytes, command: str, payload: bytes = b"") -> bytes:
    """One whole message: header + payload. Its length is the wire size of the message."""
    cmd = command.encode("ascii")
    if len(cmd) > 12:
        raise ValueError(f"command longer than 12 bytes: {command!r}")
    return magic + cmd.ljust(12, b"\0") + struct.pack("<I", len(payload)) + checksum(payload) + payload


def parse_header(header: bytes, magic: bytes, max_payload: int = MAX_PAYLOAD) -> tuple[str, int, bytes]:
    """(command, payload length, checksum) of a 24-byte header, or the WireError that it is."""
    if len(header) < HEADER_SIZE:
        raise Truncated(f"{len(header)}-byte header")
    if header[:4] != magic:
        raise BadMagic(f"magic {header[:4].hex()}, expected {magic.hex()}")
    raw = header[4:16]
    name, _, pad = raw.partition(b"\0")
    if pad.strip(b"\0") or not name:
        raise WireError(f"command field {raw!r}")
    try:
        command = name.decode("ascii")
    except UnicodeDecodeError:
        raise WireError(f"command field {raw!r}") from None
    (length,) = struct.unpack_from("<I", header, 16)
    if length > max_payload:
        raise Oversized(f"{command} announces {length} bytes (limit {max_payload})")
    return command, length, header[20:24]


def check_payload(command: str, payload: bytes, expected: bytes) -> None:
    got = checksum(payload)
    if got != expected:
        raise BadChecksum(f"{command}: checksum {got.hex()}, header says {expected.hex()}")


# -- primitives ------------------------------------------------------------------------------

class Reader:
    """A cursor over a payload; running off its end raises WireError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise WireError(f"payload ends at {len(self.data)}, wanted {n} bytes at {self.pos}")
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def compact(self) -> int:
        return read_compact(self)

    def at_end(self) -> bool:
        return self.pos >= len(self.data)


def compact_size(n: int) -> bytes:
    if n < 0:
        raise ValueError("compact size of a negative number")
    if n < 0xFD:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def read_compact(r: Reader) -> int:
    first = r.take(1)[0]
    if first < 0xFD:
        return first
    size, fmt, low = {0xFD: (2, "<H", 0xFD), 0xFE: (4, "<I", 0x10000), 0xFF: (8, "<Q", 0x100000000)}[first]
    (n,) = struct.unpack(fmt, r.take(size))
    if n < low:
        raise WireError(f"non-canonical compact size {n}")
    return n


def var_str(s: bytes) -> bytes:
    return compact_size(len(s)) + s


def _ip16(host: str) -> bytes:
    ip = ipaddress.ip_address(host)
    return _IPV4_PREFIX + ip.packed if ip.version == 4 else ip.packed


def _host(ip16: bytes) -> str:
    if ip16[:12] == _IPV4_PREFIX:
        return str(ipaddress.IPv4Address(ip16[12:]))
    return str(ipaddress.IPv6Address(ip16))


def net_addr(services: int, host: str, port: int) -> bytes:
    """A version message's address (no time field): services, 16-byte IP, port big-endian."""
    return struct.pack("<Q", services) + _ip16(host) + struct.pack(">H", port)


# -- messages --------------------------------------------------------------------------------

@dataclass
class Version:
    version: int = PROTOCOL_VERSION
    services: int = 0
    timestamp: int = 0
    recv_services: int = 0
    recv_host: str = "0.0.0.0"
    recv_port: int = 0
    from_services: int = 0
    from_host: str = "0.0.0.0"
    from_port: int = 0
    nonce: int = 0
    user_agent: str = "/shmdiag-crawler:0.1/"
    start_height: int = 0
    relay: bool = False


def encode_version(v: Version) -> bytes:
    return (struct.pack("<iQq", v.version, v.services, v.timestamp)
            + net_addr(v.recv_services, v.recv_host, v.recv_port)
            + net_addr(v.from_services, v.from_host, v.from_port)
            + struct.pack("<Q", v.nonce) + var_str(v.user_agent.encode()) + struct.pack("<i", v.start_height)
            + (bytes((int(v.relay),)) if v.version >= 70001 else b""))


def decode_version(payload: bytes) -> Version:
    r = Reader(payload)
    version, services, timestamp = r.unpack("<iQq")
    rs, rip, (rport,) = r.unpack("<Q")[0], r.take(16), r.unpack(">H")
    fs, fip, (fport,) = r.unpack("<Q")[0], r.take(16), r.unpack(">H")
    (nonce,) = r.unpack("<Q")
    ua = r.take(r.compact()).decode("utf-8", "replace")
    (height,) = r.unpack("<i")
    relay = bool(r.take(1)[0]) if not r.at_end() else True  # BIP37: absent means relay
    return Version(version, services, timestamp, rs, _host(rip), rport, fs, _host(fip), fport, nonce, ua,
                   height, relay)


@dataclass(frozen=True)
class Addr:
    """One advertised peer. ``host`` is an IP for IPv4/IPv6; other BIP155 networks (Tor, I2P,
    CJDNS) keep their raw bytes in hex and ``network`` says which."""

    host: str
    port: int
    services: int = 0
    time: int = 0
    network: str = "ipv4"

    @property
    def endpoint(self) -> str:
        return f"[{self.host}]:{self.port}" if self.network in ("ipv6", "cjdns") else f"{self.host}:{self.port}"


def encode_addr(addrs: list[Addr]) -> bytes:
    out = [compact_size(len(addrs))]
    for a in addrs:
        out.append(struct.pack("<IQ", a.time, a.services) + _ip16(a.host) + struct.pack(">H", a.port))
    return b"".join(out)


def decode_addr(payload: bytes) -> list[Addr]:
    r = Reader(payload)
    n = r.compact()
    if n > 1000:
        raise WireError(f"addr with {n} entries (limit 1000)")
    out = []
    for _ in range(n):
        t, services = r.unpack("<IQ")
        ip = r.take(16)
        (port,) = r.unpack(">H")
        host = _host(ip)
        out.append(Addr(host, port, services, t, "ipv4" if "." in host else "ipv6"))
    if not r.at_end():
        raise WireError(f"{len(payload) - r.pos} bytes after the last addr entry")
    return out


# BIP155 network ids: (name, address length)
ADDRV2_NETWORKS = {1: ("ipv4", 4), 2: ("ipv6", 16), 3: ("torv2", 10), 4: ("torv3", 32), 5: ("i2p", 32),
                   6: ("cjdns", 16)}


def encode_addrv2(addrs: list[Addr]) -> bytes:
    ids = {name: (nid, size) for nid, (name, size) in ADDRV2_NETWORKS.items()}
    out = [compact_size(len(addrs))]
    for a in addrs:
        nid, size = ids[a.network]
        raw = ipaddress.ip_address(a.host).packed if a.network in ("ipv4", "ipv6", "cjdns") else bytes.fromhex(a.host)
        if len(raw) != size:
            raise ValueError(f"{a.network} address of {len(raw)} bytes")
        out.append(struct.pack("<I", a.time) + compact_size(a.services) + bytes((nid,)) + var_str(raw)
                   + struct.pack(">H", a.port))
    return b"".join(out)


def decode_addrv2(payload: bytes) -> list[Addr]:
    """BIP155 entries; entries of unknown networks are skipped (as the BIP says), a known
    network with the wrong address length is malformed."""
    r = Reader(payload)
    n = r.compact()
    if n > 1000:
        raise WireError(f"addrv2 with {n} entries (limit 1000)")
    out = []
    for _ in range(n):
        (t,) = r.unpack("<I")
        services = r.compact()
        nid = r.take(1)[0]
        size = r.compact()
        if size > 512:
            raise WireError(f"addrv2 address of {size} bytes")
        raw = r.take(size)
        (port,) = r.unpack(">H")
        if nid not in ADDRV2_NETWORKS:
            continue
        name, want = ADDRV2_NETWORKS[nid]
        if size != want:
            raise WireError(f"{name} address of {size} bytes, expected {want}")
        if name == "ipv4":
            host = str(ipaddress.IPv4Address(raw))
        elif name in ("ipv6", "cjdns"):
            host = str(ipaddress.IPv6Address(raw))
        else:
            host = raw.hex()
        out.append(Addr(host, port, services, t, name))
    if not r.at_end():
        raise WireError(f"{len(payload) - r.pos} bytes after the last addrv2 entry")
    return out


def encode_inv(items: list[tuple[int, bytes]]) -> bytes:
    return compact_size(len(items)) + b"".join(struct.pack("<I", t) + h for t, h in items)


def decode_inv(payload: bytes) -> list[tuple[int, bytes]]:
    r = Reader(payload)
    n = r.compact()
    if n > 50_000:
        raise WireError(f"inv with {n} entries (limit 50000)")
    items = [(r.unpack("<I")[0], r.take(32)) for _ in range(n)]
    if not r.at_end():
        raise WireError("bytes after the last inv entry")
    return items


def hash_from_hex(h: str) -> bytes:
    """Internal byte order of a hash shown in the usual (reversed) hex."""
    return bytes.fromhex(h)[::-1]


def encode_getheaders(locator: list[bytes], stop: bytes = b"\0" * 32, version: int = PROTOCOL_VERSION) -> bytes:
    return struct.pack("<I", version) + compact_size(len(locator)) + b"".join(locator) + stop


@dataclass
class BlockHeader:
    version: int
    prev: bytes
    merkle: bytes
    time: int
    bits: int
    nonce: int
    raw: bytes = field(repr=False, default=b"")

    @property
    def hash(self) -> str:
        return sha256d(self.raw)[::-1].hex()


def decode_block_header(raw: bytes) -> BlockHeader:
    if len(raw) < 80:
        raise WireError(f"{len(raw)}-byte block header")
    version, prev, merkle, t, bits, nonce = struct.unpack("<i32s32sIII", raw[:80])
    return BlockHeader(version, prev, merkle, t, bits, nonce, raw[:80])


def decode_headers(payload: bytes) -> list[BlockHeader]:
    r = Reader(payload)
    n = r.compact()
    if n > 2000:
        raise WireError(f"headers with {n} entries (limit 2000)")
    out = []
    for _ in range(n):
        out.append(decode_block_header(r.take(80)))
        r.compact()  # transaction count, always 0 in headers
    if not r.at_end():
        raise WireError("bytes after the last header")
    return out


def encode_nonce(nonce: int) -> bytes:
    return struct.pack("<Q", nonce)


def decode_nonce(payload: bytes) -> int:
    if len(payload) != 8:
        raise WireError(f"{len(payload)}-byte nonce")
    return int(struct.unpack("<Q", payload)[0])
