"""The live event stream behind ``/api/events/stream``: one follower for every client.

One ``Broadcaster`` per server polls a single ``Following`` of the ring every ``POLL`` seconds
and hands what it delivers (events, and Gaps for what it could not read) to every subscriber's
queue, so 50 open dashboards cost the ring what one does. The stream reads at most about
``BATCH`` events per poll: when writers outrun that, it passes over the excess and says so
with a gap record of its own (``"dropped"``), in place, instead of taking a core from them.

A subscriber that does not keep up (its queue of ``QUEUE`` items is full) loses what does not
fit; that is counted and delivered as a gap record of its own (``"dropped"``), so delivered +
skipped still covers everything the broadcaster saw.

The broadcaster also keeps the last ``BACKLOG`` items it delivered: a new subscriber starts
with (a filtered tail of) them, then continues live, without a hole or a repeat between the two.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING

import orjson

from shmdiag.core.filter import EventFilter
from shmdiag.core.follow import Gap
from shmdiag.core.models import DiagnosticEvent
from shmdiag.export import dicts

if TYPE_CHECKING:
    from shmdiag.inspector import Following, Inspector

POLL = 0.1       # seconds between polls: an event shows within about this (plus the client's)
BATCH = 1024     # events one poll reads, about: ~10k events/s decoded at most, a fraction of a
                 # core, more than a person can read; beyond, gap records say what went by
BACKLOG = 500    # items kept for new subscribers
QUEUE = 4 * BATCH  # items a subscriber's queue holds before it drops

Item = tuple[dict, bytes]  # a record and its SSE frame, serialised once for every subscriber


def frame(d: dict) -> Item:
    return d, b"data: " + orjson.dumps(d, option=dicts.OPTS) + b"\n\n"


class Subscriber:
    """One client's queue. What does not fit is counted (events, and the events of gap records)
    with the range of sequence numbers it spans, and handed over as one gap record
    (``"dropped"``) before the next item, or as soon as the client has drained the queue."""

    def __init__(self, filt: EventFilter) -> None:
        self.filt = filt
        self.accept: Callable[[DiagnosticEvent], bool] = filt.event
        self.queue: asyncio.Queue[Item] = asyncio.Queue(QUEUE)
        self.dropped = 0  # events lost since the last item delivered
        self._first = self._last = -1

    def _gap(self) -> Item:
        d = {**dicts.doc_head("gap"), "skipped": self.dropped, "overwritten": 0, "unreadable": 0,
             "dropped": self.dropped, "first_seq": self._first, "last_seq": self._last}
        self.dropped, self._first, self._last = 0, -1, -1
        return frame(d)

    def offer(self, it: Item) -> None:
        item = it[0]
        if self.dropped and self.queue.qsize() < QUEUE - 1:
            self.queue.put_nowait(self._gap())
        try:
            self.queue.put_nowait(it)
        except asyncio.QueueFull:
            gap = item.get("kind") == "gap"
            self.dropped += item["skipped"] if gap else 1
            first, last = (item["first_seq"], item["last_seq"]) if gap else (item["seq"], item["seq"])
            if self._first < 0:
                self._first = first
            self._last = last

    async def take(self, timeout: float, most: int = 500) -> list[Item]:
        """Up to ``most`` items, waiting up to ``timeout`` seconds for the first ([] if none)."""
        if self.queue.empty() and self.dropped:
            return [self._gap()]
        try:
            out = [await asyncio.wait_for(self.queue.get(), timeout)]
        except asyncio.TimeoutError:
            return []
        while not self.queue.empty() and len(out) < most:
            out.append(self.queue.get_nowait())
        if self.queue.empty() and self.dropped:
            out.append(self._gap())
        return out


class Broadcaster:
    """Polls one follower of ``inspector`` while anyone is subscribed (in the server's loop)."""

    def __init__(self, inspector: Inspector) -> None:
        self.insp = inspector
        self.subs: set[Subscriber] = set()
        # (the event or Gap, or None for a gap record of the stream's own, and its frame)
        self.backlog: collections.deque[tuple[DiagnosticEvent | Gap | None, Item]] = collections.deque(maxlen=BACKLOG)
        self._task: asyncio.Task[None] | None = None
        self._following: Following | None = None
        self.error: str | None = None  # why polling stopped (the ring's inspector was closed)

    def subscribe(self, filt: EventFilter, n: int) -> Subscriber:
        """A new subscriber, its queue primed with the last ``n`` events ``filt`` selects: from
        the backlog (with the gap records among them) and, when the backlog holds fewer, older
        ones from the ring (``history(filt=, below=)``: the filter applied on the stored records
        before anything is decoded), so a filter for a rare type or peer still shows its past.
        Live, the one follower of every subscriber reads unfiltered and each subscriber's filter
        is tested on the events it already decoded (``EventFilter.event``)."""
        if self._following is None:
            events, cursor = self.insp.history(BACKLOG)
            self.backlog.clear()
            self.backlog.extend((e, frame(dicts.event_to_dict(e))) for e in events)
            self._following = self.insp.follower(cursor, batch=BATCH)
        sub = Subscriber(filt)
        accept = sub.accept
        if n > 0:
            picked = [d for it, d in self.backlog if not isinstance(it, DiagnosticEvent) or accept(it)]
            # the last n events, with the gap records among them
            taken, count = [], 0
            for d in reversed(picked):
                taken.append(d)
                count += d[0].get("kind") != "gap"
                if count >= n:
                    break
            if count < n:
                oldest = next((it.seq for it, _ in self.backlog if isinstance(it, DiagnosticEvent)), None)
                if oldest is not None:
                    older, _ = self.insp.history(n - count, filt=filt, follow=False, below=oldest)
                    for e in older:
                        sub.offer(frame(dicts.event_to_dict(e)))
            for d in reversed(taken):
                sub.offer(d)
        self.subs.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subs.discard(sub)

    def _send(self, it: DiagnosticEvent | Gap | None, d: Item) -> None:
        self.backlog.append((it, d))
        for sub in self.subs:
            if not isinstance(it, DiagnosticEvent) or sub.accept(it):
                sub.offer(d)

    def _skip_ahead(self) -> Item | None:
        """Keep the stream's reading within budget: when the follower is more than BATCH behind
        the ring's tail, start it again BATCH / 2 below the tail and return the gap record for
        what it passes over (``dropped``), or None. Without this a poll would decode everything
        the writers recorded since the last one (hundreds of thousands of events a second)."""
        assert self._following is not None
        cursor = self._following.cursor
        _, top = self.insp.history(0)
        if top - cursor <= BATCH:
            return None
        start = top - BATCH // 2
        self._following = self.insp.follower(start, batch=BATCH)
        n = start - cursor
        return frame({**dicts.doc_head("gap"), "skipped": n, "overwritten": 0, "unreadable": 0, "dropped": n,
                      "first_seq": cursor, "last_seq": start - 1})

    async def _run(self) -> None:
        try:
            while self.subs:
                assert self._following is not None
                try:
                    skipped = self._skip_ahead()
                    items = self._following.poll()
                except Exception as e:  # the inspector was closed (server stopping) or the ring is unreadable
                    self.error = f"{type(e).__name__}: {e}"
                    for sub in list(self.subs):
                        if not sub.queue.full():
                            sub.queue.put_nowait(frame({**dicts.doc_head("end"), "reason": self.error}))
                    return
                if skipped is not None:
                    self._send(None, skipped)
                for it in items:
                    self._send(it, frame(dicts.gap_to_dict(it) if isinstance(it, Gap) else dicts.event_to_dict(it)))
                await asyncio.sleep(POLL)
        finally:
            # Nobody listens: forget the position; the next subscriber starts from the ring's tail.
            if not self.subs:
                self._following = None
