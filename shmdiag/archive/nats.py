"""Beyond one machine: events published to NATS JetStream, and a central archive fed from it.

Publisher (``serve --nats URL``): every batch the collector follows is published on
``shmdiag.events.<host>.<ring>`` (each token made subject-safe) with headers naming the host,
ring, generation and the batch's sequence range, and a JetStream message id, so a batch sent
twice (a retry after a lost ack, a restarted collector) is stored once. A stats/health snapshot
goes to ``shmdiag.stats.<host>.<ring>`` every ``stats_period`` seconds. The stream is created if
absent (subjects ``shmdiag.events.>`` and ``shmdiag.stats.>``); one that exists with other
subjects is refused.

NATS down or slow: batches wait in a buffer of at most ``buffer_events`` events (the collector
never waits, nor do writers); beyond it, the newest batches are dropped and counted, and the
next batch that is sent carries the dropped range and counts (payload ``dropped``), so the central
archive records it as an ``undelivered`` gap. The client reconnects by itself and publishing
resumes where it stopped.

Central (``archive --from-nats URL DIR``): a durable pull consumer on ``shmdiag.events.>``;
each fetched message is written in one transaction, and acknowledged only after the commit. A
redelivered message, or a batch published twice, is dropped by (host, ring, generation, seq):
the archive's ``sources`` table says what it holds already.

Payload: ``{"events": [[ts, seq, pid, type, severity, peer, message, error, metadata,
truncated, slots], ...], "gaps": [[first, last, overwritten, unreadable, undelivered, reason], ...],
"dropped": null | [first, last, overwritten, unreadable, undelivered, reason]}`` (orjson).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import orjson

from shmdiag.archive.store import ArchiveError, ArchiveWriter, Batch, GapRow, Source, archive_files, check_file
from shmdiag.core.errors import ShmDiagError

SUBJECT_EVENTS = "shmdiag.events"
SUBJECT_STATS = "shmdiag.stats"
_MAX_PAYLOAD = 512 * 1024  # split batches above this (NATS' default max_payload is 1 MiB)
_COALESCE = 2000  # events per published batch, about (consecutive follower polls merged)


class NatsError(ShmDiagError):
    """NATS cannot be used: a bad URL, a server that cannot be reached, a conflicting stream."""


def _nats() -> Any:
    try:
        import nats  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise NatsError("NATS needs the nats-py package: pip install 'shmdiag[nats]'") from None
    return nats


def check_url(url: str) -> str:
    """``nats://host:port`` (or tls://); NatsError for anything else."""
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        raise NatsError(f"bad NATS URL {url!r}: {e}") from None
    if u.scheme not in ("nats", "tls") or not u.hostname:
        raise NatsError(f"bad NATS URL {url!r}: expected nats://HOST[:PORT]")
    del port
    return url


def token(text: str) -> str:
    """``text`` as one NATS subject token (no dots, spaces or wildcards)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


def subject(kind: str, host: str, ring: str) -> str:
    return f"{kind}.{token(host)}.{token(ring)}"


def _gap_list(g: GapRow) -> list:
    return [g.first_seq, g.last_seq, g.overwritten, g.unreadable, g.undelivered, g.reason]


def _gap_of(v: list) -> GapRow:
    return GapRow(int(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[4]), str(v[5]))


def encode(batch: Batch) -> list[tuple[dict[str, str], bytes]]:
    """A batch as NATS messages (headers, payload), split so that each stays under _MAX_PAYLOAD."""
    src = batch.source
    rows = batch.rows

    def msgs(lo: int, hi: int, rows: list, gaps: list[GapRow], dropped: GapRow | None) -> list:
        body = orjson.dumps({"events": rows, "gaps": [_gap_list(g) for g in gaps],
                             "dropped": None if dropped is None else _gap_list(dropped)})
        if len(body) > _MAX_PAYLOAD and len(rows) > 1:
            mid = len(rows) // 2
            cut = int(rows[mid][1])
            return (msgs(lo, cut, rows[:mid], [g for g in gaps if g.first_seq < cut], dropped)
                    + msgs(cut, hi, rows[mid:], [g for g in gaps if g.first_seq >= cut], None))
        headers = {"Shmdiag-Host": src.host, "Shmdiag-Ring": src.ring, "Shmdiag-Generation": str(src.generation),
                   "Shmdiag-Seq-Lo": str(lo), "Shmdiag-Seq-Hi": str(hi),
                   "Nats-Msg-Id": f"{src.host}/{src.ring}/{src.generation}/{lo}-{hi}"}
        return [(headers, body)]

    return msgs(batch.lo, batch.hi, rows, batch.gaps, batch.dropped)


def decode(headers: dict[str, str], body: bytes) -> Batch:
    """A message back into a Batch (ValueError/KeyError if it is not one of ours)."""
    src = Source(headers["Shmdiag-Host"], headers["Shmdiag-Ring"], int(headers["Shmdiag-Generation"]))
    d = orjson.loads(body)
    rows = d["events"]
    if any(len(r) != 11 for r in rows):
        if any(len(r) != 10 for r in rows):
            raise ValueError("an event row is not 11 columns")
        rows = [[*r, 1] for r in rows]  # from a collector before slots: one slot each
    return Batch(src, int(headers["Shmdiag-Seq-Lo"]), int(headers["Shmdiag-Seq-Hi"]), rows,
                 [_gap_of(g) for g in d["gaps"]], None if d.get("dropped") is None else _gap_of(d["dropped"]))


class _Loop:
    """An asyncio loop in a daemon thread, for nats-py from synchronous code."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


async def _ensure_stream(js: Any, stream: str, max_bytes: int, max_age: float) -> None:
    from nats.js import api  # type: ignore[import-not-found,unused-ignore]
    from nats.js.errors import NotFoundError  # type: ignore[import-not-found,unused-ignore]

    want = [f"{SUBJECT_EVENTS}.>", f"{SUBJECT_STATS}.>"]
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        try:
            await js.add_stream(api.StreamConfig(name=stream, subjects=want, max_bytes=max_bytes, max_age=max_age,
                                                 storage=api.StorageType.FILE, duplicate_window=120.0))
        except Exception as e:
            raise NatsError(f"cannot create the JetStream stream {stream!r}: {e}") from None
        return
    have = set(info.config.subjects or [])
    if not set(want) <= have:
        raise NatsError(f"the JetStream stream {stream!r} exists with subjects {sorted(have)}, not "
                        f"{want}: use another --nats-stream, or change that stream")


async def _connect(url: str, name: str, log: logging.Logger, timeout: float = 5.0,
                   closing: Callable[[], bool] = lambda: False) -> Any:
    nats = _nats()

    async def on_error(e: Exception) -> None:
        log.debug("shmdiag NATS: %s", e)

    async def on_disconnect() -> None:
        if closing():
            return
        log.warning("shmdiag NATS: disconnected from %s; buffering", url)

    async def on_reconnect() -> None:
        log.warning("shmdiag NATS: reconnected to %s", url)

    try:
        return await asyncio.wait_for(
            nats.connect(url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2,
                         allow_reconnect=True, error_cb=on_error, disconnected_cb=on_disconnect,
                         reconnected_cb=on_reconnect, ping_interval=5, max_outstanding_pings=2),
            timeout)
    except asyncio.TimeoutError:
        raise NatsError(f"cannot reach NATS at {url} (no connection within {timeout:g} s)") from None
    except Exception as e:
        raise NatsError(f"cannot reach NATS at {url}: {str(e) or type(e).__name__}") from None


class NatsSink:
    """Publishes batches to JetStream from a buffer of at most ``buffer_events`` events (a Sink
    of ``archiver.RingArchiver``). ``write`` never waits for NATS."""

    def __init__(self, url: str, *, host: str, logger: logging.Logger | None = None, buffer_events: int = 200_000,
                 stream: str = "SHMDIAG", stream_max_bytes: int = 1 << 30, stream_max_age: float = 7 * 86400.0,
                 stats_period: float = 10.0, publish_timeout: float = 2.0) -> None:
        check_url(url)
        _nats()
        self.url, self.host, self.stream = url, host, stream
        self.log = logger or logging.getLogger("shmdiag")
        self.buffer_events = buffer_events
        self.stats_period = stats_period
        self.publish_timeout = publish_timeout
        self.status: Callable[[], dict] | None = None  # the stats snapshot, set by whoever has an Inspector
        self.published = 0     # events acknowledged by JetStream
        self.dropped = 0       # events dropped because the buffer was full
        self.dropped_gaps = 0  # ring gaps inside dropped batches (already counted by the follower)
        self.retries = 0
        self._buf: collections.deque[Batch] = collections.deque()
        self._inflight: list[Batch] = []
        self._buffered = 0
        self._drop: GapRow | None = None  # what was dropped since the last batch buffered
        self._lock = threading.Lock()
        self._closing = False
        self._io = _Loop("shmdiag-nats")
        try:
            self._nc = self._io.run(_connect(url, f"shmdiag {host}", self.log, closing=lambda: self._closing))
        except BaseException:
            self._io.stop()
            raise
        try:
            self._js = self._nc.jetstream()
            self._io.run(_ensure_stream(self._js, stream, stream_max_bytes, stream_max_age), 10)
        except BaseException:
            self._closing = True
            try:
                self._io.run(self._nc.close(), 5)
            except Exception:
                pass
            self._io.stop()
            raise
        self._wake = asyncio.Event()
        self._task = asyncio.run_coroutine_threadsafe(self._publisher(), self._io.loop)
        self._stats_task = asyncio.run_coroutine_threadsafe(self._stats_loop(), self._io.loop)
        self._source: Source | None = None

    # -- the Sink protocol -------------------------------------------------------------------
    def resume(self, src: Source) -> int | None:
        return None  # JetStream's message ids drop what was published already

    def generations(self, host: str, ring: str) -> dict[int, int]:
        return {}

    def note(self, src: Source, kind: str, detail: str) -> None:
        pass  # notes stay in the local archive; the stats snapshot carries the counts

    def write(self, batch: Batch) -> None:
        self._source = batch.source
        n = len(batch.rows)
        with self._lock:
            if self._buffered + n > self.buffer_events and self._buffered:
                self._count_drop(batch)
                return
            if self._drop is not None:  # the range dropped just before this batch travels with it
                batch.dropped, self._drop = self._drop, None
            self._buf.append(batch)
            self._buffered += n
        self._io.loop.call_soon_threadsafe(self._wake.set)

    def _count_drop(self, batch: Batch) -> None:
        n = len(batch.rows)
        ow = sum(g.overwritten for g in batch.gaps)
        ur = sum(g.unreadable for g in batch.gaps)
        if self._drop is None:
            self.log.error("shmdiag %s: NATS buffer full (%d events): dropping batches, counted, until NATS "
                           "takes them again", batch.source.ring, self.buffer_events)
            self._drop = GapRow(batch.lo, batch.hi - 1, reason="not delivered: the collector's NATS buffer was full")
        d = self._drop
        d.last_seq = batch.end - 1
        d.overwritten += ow
        d.unreadable += ur
        # in sequence numbers, as every gap (an event of several slots counts as several)
        d.undelivered = (d.last_seq - d.first_seq + 1) - d.overwritten - d.unreadable
        self.dropped += n
        self.dropped_gaps += ow + ur

    def counters(self) -> dict[str, int]:
        return {"published": self.published, "dropped": self.dropped, "buffered": self._buffered,
                "retries": self.retries}

    # -- publishing ----------------------------------------------------------------------------
    def _take(self) -> list[Batch]:
        """The next batches to publish as one (consecutive, same source, up to _COALESCE events);
        they stay counted as buffered until published. A drop with no batch after it to carry
        it is sent on its own once the buffer is empty, so the central archive learns of it."""
        with self._lock:
            if not self._buf and self._drop is not None and self._source is not None:
                d, self._drop = self._drop, None
                self._buf.append(Batch(self._source, d.last_seq + 1, d.last_seq + 1, [], [], d))
            take: list[Batch] = []
            n = 0
            # Never merge across a drop: the batch after it carries it (its lo is where the drop ends).
            while self._buf and n < _COALESCE and (not take or (self._buf[0].source == take[0].source
                                                                and self._buf[0].dropped is None)):
                b = self._buf.popleft()
                take.append(b)
                n += len(b.rows)
            return take

    async def _publisher(self) -> None:
        subj_cache: dict[Source, str] = {}
        while True:
            take = self._take()
            if not take:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            src = take[0].source
            merged = take[0] if len(take) == 1 else Batch(
                src, take[0].lo, take[-1].hi, [r for b in take for r in b.rows], [g for b in take for g in b.gaps],
                take[0].dropped)
            subj = subj_cache.get(src) or subj_cache.setdefault(src, subject(SUBJECT_EVENTS, src.host, src.ring))
            msgs = encode(merged)
            self._inflight = take
            while msgs:
                headers, body = msgs[0]
                try:
                    await self._js.publish(subj, body, timeout=self.publish_timeout, headers=headers)
                except Exception as e:  # not connected, no ack in time, no responders: retry the same one
                    self.retries += 1
                    self.log.debug("shmdiag NATS publish failed (%s); retrying", e)
                    if self._give_up:
                        return
                    await asyncio.sleep(0.2)
                    continue
                msgs.pop(0)
            self._inflight = []
            n = len(merged.rows)
            with self._lock:
                self._buffered -= n
                self.published += n

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(self.stats_period)
            await self._publish_stats()

    async def _publish_stats(self) -> None:
        src = self._source
        if src is None or not self._nc.is_connected:
            return
        try:
            body = {"host": self.host, "ring": src.ring, "generation": src.generation, "nats": self.counters()}
            if self.status is not None:
                body.update(await asyncio.get_running_loop().run_in_executor(None, self.status))
            await self._nc.publish(subject(SUBJECT_STATS, self.host, src.ring),
                                   orjson.dumps(body, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS))
        except Exception as e:
            self.log.debug("shmdiag NATS stats snapshot failed: %s", e)

    _give_up = False

    def close(self, timeout: float = 10.0) -> None:
        """Publish what is buffered (for up to ``timeout`` s), count the rest as dropped, disconnect."""
        self._closing = True
        self._io.loop.call_soon_threadsafe(self._wake.set)
        try:
            self._task.result(timeout)
        except Exception:  # concurrent.futures.TimeoutError: NATS still down
            self._give_up = True
            self._task.cancel()
        left = sum(len(b.rows) for b in [*self._inflight, *self._buf])
        if left:
            self.dropped += left
            self.log.error("shmdiag NATS: %d events still buffered at stop were not published", left)
        self._stats_task.cancel()
        try:
            self._io.run(self._publish_stats(), 3)
            self._io.run(self._nc.drain(), 5)
        except Exception:
            pass
        self._io.stop()
        if self.dropped:
            self.log.warning("shmdiag NATS: %d events published, %d dropped (counted; the central archive "
                             "records them as undelivered)", self.published, self.dropped)


# -- the central archive ---------------------------------------------------------------------------
def run_central(url: str, directory: str, *, max_bytes: int, max_age: float, keep: float | None,
                stream: str = "SHMDIAG", durable: str = "shmdiag-archive", stop: threading.Event | None = None,
                logger: logging.Logger | None = None) -> int:
    """Archive every host's events from the stream into ``directory`` until SIGINT/SIGTERM (or
    ``stop``). Returns 0; raises NatsError/ArchiveError (one line) for bad input."""
    check_url(url)
    _nats()
    log = logger or logging.getLogger("shmdiag")
    if not log.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)
        log.propagate = False
    if os.path.isdir(directory):  # refuse a directory that is not an archive before connecting
        for p in archive_files(directory):
            check_file(p).close()
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, lambda *_: stop.set())
    asyncio.run(_central(url, directory, dict(max_bytes=max_bytes, max_age=max_age, keep=keep), stream, durable,
                         stop, log))
    return 0


async def _consumer_config(js: Any, stream: str, durable: str) -> Any:
    """The durable consumer, (re)started right after the last message acknowledged: a central
    archiver killed with messages fetched but not acknowledged gets them again first, in order
    (a durable consumer would otherwise redeliver them only after ack_wait, after newer ones,
    and a newer batch must never be archived before an older one of its source). Messages
    committed but not acknowledged come again too, and are dropped as duplicates."""
    from nats.js import api  # type: ignore[import-not-found,unused-ignore]
    from nats.js.errors import NotFoundError  # type: ignore[import-not-found,unused-ignore]

    cfg: dict[str, Any] = dict(ack_policy=api.AckPolicy.EXPLICIT, ack_wait=60.0, max_ack_pending=10_000,
                               filter_subject=f"{SUBJECT_EVENTS}.>")
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        return api.ConsumerConfig(durable_name=durable, deliver_policy=api.DeliverPolicy.ALL, **cfg)
    floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
    await js.delete_consumer(stream, durable)
    return api.ConsumerConfig(durable_name=durable, deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                              opt_start_seq=(floor or 0) + 1, **cfg)


async def _write_in_order(writer: ArchiveWriter, batch: Batch, msg: Any, stop: threading.Event,
                          log: logging.Logger) -> int:
    """Commit ``batch``, retrying (a full disk) until it is written or we are stopped: never skip
    past it, or a newer batch of its source would be archived first."""
    while True:
        try:
            return writer.write(batch)
        except ArchiveError as e:
            log.error("shmdiag central: %s; retrying", e)
            try:
                await msg.in_progress()  # keep it ours meanwhile
            except Exception:
                pass
            if stop.is_set():
                raise
            await asyncio.sleep(1.0)


async def _central(url: str, directory: str, rotation: dict[str, Any], stream: str, durable: str,
                   stop: threading.Event, log: logging.Logger) -> None:
    from nats.errors import TimeoutError as NatsTimeout  # type: ignore[import-not-found,unused-ignore]

    nc = await _connect(url, "shmdiag central archive", log)
    writer: ArchiveWriter | None = None
    try:
        writer = ArchiveWriter(directory, **rotation)  # after connecting: a bad URL leaves no empty file
        js = nc.jetstream()
        await _ensure_stream(js, stream, 1 << 30, 7 * 86400.0)
        try:
            sub = await js.pull_subscribe(f"{SUBJECT_EVENTS}.>", durable=durable, stream=stream,
                                          config=await _consumer_config(js, stream, durable))
        except Exception as e:
            raise NatsError(f"cannot create the durable consumer {durable!r} on stream {stream!r}: {e}") from None
        print(f"shmdiag: archiving {url} stream {stream!r} (durable consumer {durable!r}) into {writer.directory}",
              flush=True)
        archived = 0
        last_log = time.monotonic()
        while not stop.is_set():
            try:
                msgs = await sub.fetch(batch=200, timeout=0.5)
            except (NatsTimeout, asyncio.TimeoutError):
                continue
            except Exception as e:  # disconnected: the client reconnects by itself
                log.debug("shmdiag central: fetch failed: %s", e)
                await asyncio.sleep(0.2)
                continue
            for m in msgs:
                try:
                    batch = decode(dict(m.headers or {}), m.data)
                except (KeyError, ValueError, TypeError) as e:
                    log.warning("shmdiag central: a message on %s that is not a shmdiag batch (%s): skipped",
                                m.subject, e)
                    await m.term()
                    continue
                archived += await _write_in_order(writer, batch, m, stop, log)  # committed ...
                try:
                    await m.ack()  # ... then acknowledged: a crash in between redelivers it, dropped as a duplicate
                except Exception as e:
                    log.debug("shmdiag central: ack failed (%s); it will be redelivered", e)
            now = time.monotonic()
            if now - last_log > 60:
                last_log = now
                log.info("shmdiag central: %d events archived", archived)
    finally:
        try:
            await nc.drain()
        except Exception:
            pass
        if writer is not None:
            writer.close()


# -- following a remote ring -------------------------------------------------------------------------
def follow_remote(url: str, host: str, ring: str, *, n: int, follow: bool,
                  emit: Callable[[list[Batch], int], None], stop: threading.Event | None = None,
                  stream: str = "SHMDIAG", wait: float = 2.0) -> None:
    """``tail --nats``: the last batch published for ``host``/``ring`` (``emit(batches, n)`` shows
    its last ``n`` events), then, with ``follow``, every batch after it as it arrives, until
    ``stop`` (or SIGINT). An ordered ephemeral consumer: nothing is acknowledged or kept."""
    check_url(url)
    _nats()
    stop = stop or threading.Event()
    asyncio.run(_follow_remote(url, host, ring, n, follow, emit, stop, stream, wait))


async def _follow_remote(url: str, host: str, ring: str, n: int, follow: bool,
                         emit: Callable[[list[Batch], int], None], stop: threading.Event, stream: str,
                         wait: float) -> None:
    from nats.errors import TimeoutError as NatsTimeout  # type: ignore[import-not-found,unused-ignore]
    from nats.js import api  # type: ignore[import-not-found,unused-ignore]

    nc = await _connect(url, "shmdiag tail", logging.getLogger("shmdiag"))
    try:
        js = nc.jetstream()
        subj = subject(SUBJECT_EVENTS, host, ring)
        try:
            sub = await js.subscribe(subj, stream=stream, ordered_consumer=True,
                                     deliver_policy=api.DeliverPolicy.LAST)
        except Exception as e:
            raise NatsError(f"cannot follow {subj} on stream {stream!r}: {e}") from None
        first = True
        while not stop.is_set():
            try:
                m = await sub.next_msg(timeout=wait if first and not follow else 0.5)
            except (NatsTimeout, asyncio.TimeoutError):
                if first and not follow:
                    return  # nothing published for that ring yet
                continue
            try:
                batch = decode(dict(m.headers or {}), m.data)
            except (KeyError, ValueError, TypeError):
                continue
            emit([batch], n if first else 0)
            if first and not follow:
                return
            first = False
    finally:
        try:
            await nc.close()
        except Exception:
            pass
