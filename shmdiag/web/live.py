"""The live event stream behind ``/api/events/stream``: one follower for every client.

One ``Broadcaster`` per server polls a single ``Following`` of the ring every ``POLL`` seconds
and hands what it delivers (events, and Gaps for what it could not read) to every subscriber's
queue, so 50 open dashboards cost the ring what one does. A poll looks at no more than ``BATCH``
sequence numbers: when writers outrun that, the follower falls behind, the ring overwrites what
it had not reached and the stream says so with gap records, in place, instead of taking a core.

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

from shmdiag.core.follow import Gap
from shmdiag.core.models import DiagnosticEvent
from shmdiag.export import dicts

if TYPE_CHECKING:
    from shmdiag.inspector import Following, Inspector

POLL = 0.1       # seconds between polls: an event shows within about this (plus the client's)
BATCH = 4096     # sequence numbers one poll looks at, at most (about 40k events/s decoded)
BACKLOG = 500    # items kept for new subscribers
QUEUE = 2000     # items a subscriber's queue holds before it drops


class Subscriber:
    def __init__(self, accept: Callable[[DiagnosticEvent], bool]) -> None:
        self.accept = accept
        self.queue: asyncio.Queue[dict] = asyncio.Queue(QUEUE)
        self.dropped = 0  # items lost since the last one delivered: sent as a gap record

    def offer(self, item: dict) -> None:
        if self.dropped and self.queue.qsize() < QUEUE - 1:
            self.queue.put_nowait({"kind": "gap", "skipped": self.dropped, "overwritten": 0, "unreadable": 0,
                                   "dropped": self.dropped, "first_seq": -1, "last_seq": -1})
            self.dropped = 0
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1


class Broadcaster:
    """Polls one follower of ``inspector`` while anyone is subscribed (in the server's loop)."""

    def __init__(self, inspector: Inspector) -> None:
        self.insp = inspector
        self.subs: set[Subscriber] = set()
        self.backlog: collections.deque[tuple[DiagnosticEvent | Gap, dict]] = collections.deque(maxlen=BACKLOG)
        self._task: asyncio.Task[None] | None = None
        self._following: Following | None = None
        self.error: str | None = None  # why polling stopped (the ring's inspector was closed)

    def subscribe(self, accept: Callable[[DiagnosticEvent], bool], n: int) -> Subscriber:
        """A new subscriber, its queue primed with the last ``n`` backlog items it accepts (and
        the gaps between them)."""
        if self._following is None:
            events, cursor = self.insp.history(BACKLOG)
            self.backlog.clear()
            self.backlog.extend((e, dicts.event_to_dict(e)) for e in events)
            self._following = self.insp.follower(cursor, batch=BATCH)
        sub = Subscriber(accept)
        if n > 0:
            picked = [d for it, d in self.backlog if isinstance(it, Gap) or accept(it)]
            # the last n events, with the gap records among them
            taken, count = [], 0
            for d in reversed(picked):
                taken.append(d)
                count += d.get("kind") != "gap"
                if count >= n:
                    break
            for d in reversed(taken):
                sub.offer(d)
        self.subs.add(sub)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subs.discard(sub)

    async def _run(self) -> None:
        try:
            while self.subs:
                assert self._following is not None
                try:
                    items = self._following.poll()
                except Exception as e:  # the inspector was closed (server stopping) or the ring is unreadable
                    self.error = f"{type(e).__name__}: {e}"
                    for sub in list(self.subs):
                        sub.queue.put_nowait({"kind": "end", "reason": self.error}) if not sub.queue.full() else None
                    return
                for it in items:
                    d = dicts.gap_to_dict(it) if isinstance(it, Gap) else dicts.event_to_dict(it)
                    self.backlog.append((it, d))
                    for sub in self.subs:
                        if isinstance(it, Gap) or sub.accept(it):
                            sub.offer(d)
                await asyncio.sleep(POLL)
        finally:
            # Nobody listens: forget the position; the next subscriber starts from the ring's tail.
            if not self.subs:
                self._following = None
