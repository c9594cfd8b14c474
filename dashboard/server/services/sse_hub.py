"""Fan-out of Redis streams to SSE clients: ONE reader task per stream key, shared by all of its clients.

ADR 0008. A client subscribes (which starts the key's reader if there is none, and waits until the reader has fixed
its cursor), then optionally replays the backlog after its Last-Event-ID with XRANGE, then takes live entries from
its bounded queue. The reader delivers every entry after the cursor it had when the client subscribed, and the
backlog covers everything up to the moment it was read, so the union has no gap; the client drops queued entries
whose id is not after the last one it sent, so there is no duplicate either.
A client whose queue is full is dropped (its stream ends) rather than slowing the reader or the other clients; the
browser reconnects with Last-Event-ID and replays what it missed. The reader is cancelled when its last client
leaves and a new one is started when a client returns.
"""
from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field

from redis.exceptions import RedisError

log = logging.getLogger("tidal.dashboard.sse")

STREAM_ID_RE = re.compile(r"^\d{1,20}-\d{1,20}$")


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(eq=False)
class Entry:
    id: str
    key: tuple[int, int]
    fields: dict


class Subscription:
    def __init__(self, key: str, start_id: str, maxsize: int):
        self.stream_key = key
        self.start_id = start_id          # the reader's cursor when this client joined
        self.maxsize = maxsize
        self.queue: asyncio.Queue[Entry | None] = asyncio.Queue()   # bounded by `offer`; None = you are dropped
        self.overflowed = False

    def offer(self, entry: Entry) -> bool:
        if self.overflowed:
            return False
        if self.queue.qsize() >= self.maxsize:
            self.overflowed = True
            self.queue.put_nowait(None)
            return False
        self.queue.put_nowait(entry)
        return True

    def close(self) -> None:
        self.queue.put_nowait(None)

    async def get(self) -> Entry | None:
        """The next live entry, or None once this client has been dropped (fell behind, or shutdown)."""
        return await self.queue.get()


@dataclass(eq=False)
class StreamReader:
    key: str
    cursor: str = "0-0"
    subscribers: set = field(default_factory=set)
    task: asyncio.Task | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class StreamHub:
    def __init__(self, redis, *, block_ms: int = 2000, queue_size: int = 2048, batch: int = 512,
                 ready_timeout: float = 10.0):
        self.ready_timeout = ready_timeout
        self.redis = redis                   # a client whose socket timeout exceeds block_ms
        self.block_ms = block_ms
        self.queue_size = queue_size
        self.batch = batch
        self.readers: dict[str, StreamReader] = {}
        self.readers_started = 0             # how many reader tasks were ever created (tests)
        self.dropped_clients = 0

    # ---- subscription
    async def subscribe(self, key: str) -> Subscription:
        reader = self.readers.get(key)
        if reader is None:
            reader = StreamReader(key)
            self.readers[key] = reader
            self.readers_started += 1
            reader.task = asyncio.create_task(self._read(reader), name=f"sse-reader:{key}")
        # the reader fixes its starting cursor first; a subscriber must not miss what comes after it
        try:
            await asyncio.wait_for(reader.ready.wait(), self.ready_timeout)
        except TimeoutError:
            if not reader.subscribers and self.readers.get(key) is reader:  # Redis is down: do not leave it behind
                self.readers.pop(key, None)
                if reader.task is not None:
                    reader.task.cancel()
            raise
        sub = Subscription(key, reader.cursor, self.queue_size)
        reader.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        reader = self.readers.get(sub.stream_key)
        if reader is None:
            return
        reader.subscribers.discard(sub)
        if not reader.subscribers:
            self.readers.pop(sub.stream_key, None)
            if reader.task is not None:
                reader.task.cancel()

    def reader_count(self, key: str | None = None) -> int:
        return len(self.readers) if key is None else int(key in self.readers)

    def client_count(self, key: str) -> int:
        reader = self.readers.get(key)
        return len(reader.subscribers) if reader else 0

    async def close(self) -> None:
        readers = list(self.readers.values())
        self.readers.clear()
        for reader in readers:
            for sub in list(reader.subscribers):
                sub.close()
            if reader.task is not None:
                reader.task.cancel()
        for reader in readers:
            if reader.task is not None:
                try:
                    await reader.task
                except (asyncio.CancelledError, Exception):
                    pass

    # ---- backlog
    async def backlog(self, key: str, after_id: str):
        """Entries strictly after `after_id`, oldest first, paged (XRANGE with an exclusive start)."""
        start = "(" + after_id
        while True:
            page = await self.redis.xrange(key, min=start, max="+", count=self.batch)
            for entry_id, fields in page:
                yield Entry(entry_id, parse_id(entry_id), fields)
            if len(page) < self.batch:
                return
            start = "(" + page[-1][0]

    # ---- the reader
    async def _read(self, reader: StreamReader) -> None:
        try:
            while True:
                try:
                    last = await self.redis.xrevrange(reader.key, count=1)
                    reader.cursor = last[0][0] if last else "0-0"
                    break
                except (RedisError, OSError) as exc:
                    log.warning("SSE reader %s: cannot read the stream (%s); retrying", reader.key, exc)
                    await asyncio.sleep(1.0)
            reader.ready.set()
            while True:
                try:
                    response = await self.redis.xread({reader.key: reader.cursor}, count=self.batch,
                                                      block=self.block_ms)
                except (RedisError, OSError) as exc:
                    log.warning("SSE reader %s: %s; retrying", reader.key, exc)
                    await asyncio.sleep(1.0)
                    continue
                for _key, entries in response or ():
                    for entry_id, fields in entries:
                        entry = Entry(entry_id, parse_id(entry_id), fields)
                        reader.cursor = entry_id
                        for sub in list(reader.subscribers):
                            if not sub.offer(entry):
                                if sub in reader.subscribers:
                                    reader.subscribers.discard(sub)
                                    self.dropped_clients += 1
        finally:
            reader.ready.set()
