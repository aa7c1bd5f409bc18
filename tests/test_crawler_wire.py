"""The crawler's wire codec (tools/crawler/wire.py) against known byte strings: the genesis
block headers, the protocol documentation's version message, compact sizes, addr and BIP155
addrv2 entries written out by hand from the specifications."""

from __future__ import annotations

import struct

import pytest

from tools.crawler import wire

# The mainnet genesis block header (80 bytes) and its hash.
GENESIS_HEADER = bytes.fromhex(
    "01000000" + "00" * 32
    + "3ba3edfd7a7b12b27ac72c3e67768f617fc81bc3888a51323a9fb8aa4b1e5e4a"
    + "29ab5f49" + "ffff001d" + "1dac2b7c")

# https://en.bitcoin.it/wiki/Protocol_documentation#version: "/Satoshi:0.7.2/", height 212672.
WIKI_VERSION = bytes.fromhex(
    "f9beb4d9" "76657273696f6e0000000000" "64000000" "3b648d5a"
    "62ea0000" "0100000000000000" "11b2d05000000000"
    "010000000000000000000000000000000000ffff000000000000"
    "010000000000000000000000000000000000ffff000000000000"
    "3b2eb35d8ce61765" "0f2f5361746f7368693a302e372e322f" "c03e0300")


def test_genesis_header_hashes():
    h = wire.decode_block_header(GENESIS_HEADER)
    assert h.hash == wire.GENESIS["main"]
    assert (h.version, h.time, h.bits, h.nonce, h.prev) == (1, 1231006505, 0x1D00FFFF, 2083236893, b"\0" * 32)
    # regtest's genesis: same merkle root, its own time, bits and nonce
    regtest = GENESIS_HEADER[:68] + struct.pack("<III", 1296688602, 0x207FFFFF, 2)
    assert wire.decode_block_header(regtest).hash == wire.GENESIS["regtest"]


def test_wiki_version_message_decodes_and_reencodes():
    cmd, n, ck = wire.parse_header(WIKI_VERSION[:24], wire.MAGIC["main"])
    payload = WIKI_VERSION[24:]
    assert (cmd, n, len(payload)) == ("version", 100, 100)
    wire.check_payload(cmd, payload, ck)
    v = wire.decode_version(payload)
    assert (v.version, v.services, v.timestamp) == (60002, 1, 1355854353)
    assert (v.recv_host, v.recv_port, v.from_host, v.from_port) == ("0.0.0.0", 0, "0.0.0.0", 0)
    assert v.user_agent == "/Satoshi:0.7.2/" and v.start_height == 212672
    assert v.nonce == 0x6517E68C5DB32E3B
    assert v.relay is True  # absent (version < 70001): relay
    assert wire.frame(wire.MAGIC["main"], "version", wire.encode_version(v)) == WIKI_VERSION


def test_version_roundtrip_with_relay_and_ipv6():
    v = wire.Version(version=70016, services=9, timestamp=1_700_000_000, recv_services=1, recv_host="::1",
                     recv_port=18444, from_host="10.1.2.3", from_port=8333, nonce=42, user_agent="/x:1/",
                     start_height=-1, relay=False)
    b = wire.encode_version(v)
    assert b[-1] == 0 and wire.decode_version(b) == v


def test_verack_frame_is_the_known_24_bytes():
    # An empty payload's checksum is 5df6e0e2 (sha256d of nothing).
    assert wire.frame(wire.MAGIC["main"], "verack") == bytes.fromhex(
        "f9beb4d9" "76657261636b000000000000" "00000000" "5df6e0e2")


@pytest.mark.parametrize("n, encoded", [
    (0, "00"), (0xFC, "fc"), (0xFD, "fdfd00"), (0xFFFF, "fdffff"), (0x10000, "fe00000100"),
    (0xFFFFFFFF, "feffffffff"), (0x100000000, "ff0000000001000000"),
])
def test_compact_size(n, encoded):
    assert wire.compact_size(n).hex() == encoded
    assert wire.read_compact(wire.Reader(bytes.fromhex(encoded))) == n


@pytest.mark.parametrize("encoded", ["fd0100", "fefc000000", "ff0000010000000000"])
def test_non_canonical_compact_size_is_refused(encoded):
    with pytest.raises(wire.WireError, match="non-canonical"):
        wire.read_compact(wire.Reader(bytes.fromhex(encoded)))


def test_addr_entries():
    payload = bytes.fromhex(
        "02"
        "e215104d" "0100000000000000" "00000000000000000000ffff0a000001" "208d"    # 10.0.0.1:8333
        "00000000" "0900000000000000" "20010db8000000000000000000000001" "480c")   # [2001:db8::1]:18444
    a, b = wire.decode_addr(payload)
    assert (a.host, a.port, a.services, a.time, a.network) == ("10.0.0.1", 8333, 1, 0x4D1015E2, "ipv4")
    assert (b.host, b.port, b.services, b.endpoint) == ("2001:db8::1", 18444, 9, "[2001:db8::1]:18444")
    assert wire.encode_addr([a, b]) == payload


def test_addrv2_entries_from_bip155():
    payload = bytes.fromhex(
        "03"
        "01000000" "fd0904" "01" "04" "01020304" "208d"                         # IPv4 1.2.3.4:8333, services 1033
        "02000000" "01" "02" "10" "20010db8000000000000000000000001" "0050"     # IPv6 [2001:db8::1]:80
        "03000000" "00" "04" "20" + "ab" * 32 + "0000")                          # Tor v3, 32 bytes
    a, b, c = wire.decode_addrv2(payload)
    assert (a.host, a.port, a.services, a.time, a.network) == ("1.2.3.4", 8333, 1033, 1, "ipv4")
    assert (b.host, b.port, b.network) == ("2001:db8::1", 80, "ipv6")
    assert (c.host, c.network) == ("ab" * 32, "torv3")
    assert wire.encode_addrv2([a, b, c]) == payload


def test_addrv2_unknown_network_skipped_wrong_length_refused():
    unknown = bytes.fromhex("01" "00000000" "00" "63" "03" "aabbcc" "0001")
    assert wire.decode_addrv2(unknown) == []
    bad = bytes.fromhex("01" "00000000" "00" "01" "05" "0102030405" "0001")
    with pytest.raises(wire.WireError, match="ipv4 address of 5 bytes"):
        wire.decode_addrv2(bad)


def test_inv_getheaders_headers_ping():
    h = bytes(range(32))
    inv = wire.encode_inv([(wire.MSG_BLOCK, h), (wire.MSG_TX, h[::-1])])
    assert inv == b"\x02" + b"\x02\0\0\0" + h + b"\x01\0\0\0" + h[::-1]
    assert wire.decode_inv(inv) == [(2, h), (1, h[::-1])]
    gh = wire.encode_getheaders([wire.hash_from_hex(wire.GENESIS["main"])])
    assert len(gh) == 4 + 1 + 32 + 32 and gh[5:37].hex().startswith("6fe28c0ab6f1b372")
    headers = wire.decode_headers(b"\x01" + GENESIS_HEADER + b"\x00")
    assert [x.hash for x in headers] == [wire.GENESIS["main"]]
    assert wire.decode_nonce(wire.encode_nonce(2**64 - 1)) == 2**64 - 1


def test_header_faults_are_named():
    regtest = wire.MAGIC["regtest"]
    ping = wire.frame(regtest, "ping", wire.encode_nonce(7))
    assert len(ping) == 32
    with pytest.raises(wire.BadMagic, match="magic f9beb4d9, expected fabfb5da"):
        wire.parse_header(wire.frame(wire.MAGIC["main"], "ping", b"x" * 8)[:24], regtest)
    with pytest.raises(wire.Oversized, match="33554432 bytes"):
        wire.parse_header(regtest + b"block".ljust(12, b"\0") + struct.pack("<I", 32 << 20) + b"\0" * 4, regtest)
    cmd, n, ck = wire.parse_header(ping[:24], regtest)
    with pytest.raises(wire.BadChecksum):
        wire.check_payload(cmd, b"\0" * 8, ck)
    with pytest.raises(wire.Truncated):
        wire.parse_header(ping[:10], regtest)
    with pytest.raises(wire.WireError, match="command field"):
        wire.parse_header(regtest + b"pi\0ng".ljust(12, b"\0") + ping[16:24], regtest)
    with pytest.raises(wire.WireError):
        wire.decode_inv(b"\x02" + b"\0" * 36)  # promises 2 entries, holds 1


def test_crawler_uses_only_the_public_api():
    """The crawler is a user of shmdiag: ``from shmdiag import <public name>`` and nothing deeper."""
    import ast
    from pathlib import Path

    import shmdiag

    for path in (Path(__file__).resolve().parent.parent / "tools" / "crawler").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not [a.name for a in node.names if a.name.startswith("shmdiag")], path
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("shmdiag"):
                assert node.module == "shmdiag", (path, node.module)
                assert {a.name for a in node.names} <= set(shmdiag.__all__), path
