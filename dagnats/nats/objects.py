"""Values too big for an event, in the JetStream object store `dagnats_values` (core/values.py).

Objects are laid out as NATS object stores lay them out (chunks on `$O.<bucket>.C.<nuid>`, a
meta message with a rollup on `$O.<bucket>.M.<base64 name>`), so `nats object get` reads
them too, but written and read here with the hot path's tools: chunk publishes pipelined on
one connection (acked, in order: one connection's messages reach the stream in the order
sent) and reads by batched direct gets, with no consumer (nats-py's ObjectStore.get joins
chunks by repeated `bytes +=` and needs a consumer per read, which workers may not create).

A name is the sha256 of the content, so:
- a write is idempotent: a name whose meta is there is not written again, and a redo after a
  crash (chunks written, meta not) writes new chunks under a new nuid and then the meta (the
  old chunks stay, unreferenced: deleting values is not done yet);
- a read checks what it got against its name.
The meta is written last, after every chunk was acknowledged, and callers await `put` before
the event that names the value (§9: a reference never names a value that is not stored).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.errors import APIError, BadRequestError, NotFoundError

from dagnats.errors import NotFound

from . import names
from .replies import Replies

CHUNK_BYTES = 256 * 1024
WINDOW = 16  # chunk publishes awaiting their acks at once


def bucket_config(replicas: int = 1) -> api.ObjectStoreConfig:
    return api.ObjectStoreConfig(
        description="dagnats values too big for an event", storage=api.StorageType.FILE, replicas=replicas
    )


async def ensure_bucket(js: Any, replicas: int = 1) -> None:
    """Create the values bucket unless it exists (with `replicas`, as the streams get theirs)."""
    try:
        await js.stream_info(names.VALUES_STREAM)
    except NotFoundError:
        try:
            await js.create_object_store(names.VALUES_BUCKET, config=bucket_config(replicas))
        except BadRequestError:
            pass  # another process created it meanwhile


def _meta_subject(name: str) -> str:
    encoded = base64.urlsafe_b64encode(name.encode()).decode()
    return f"$O.{names.VALUES_BUCKET}.M.{encoded}"


def _chunk_subject(nuid: str) -> str:
    return f"$O.{names.VALUES_BUCKET}.C.{nuid}"


class ObjectValues:
    """`dagnats.ports.Values` on the JetStream object store, over one connection."""

    def __init__(self, nc: NATS, replies: Replies) -> None:
        self.nc = nc
        self.replies = replies
        self._direct = f"$JS.API.DIRECT.GET.{names.VALUES_STREAM}"

    async def put_value(self, name: str, data: bytes) -> None:
        if await self._meta(name) is not None:
            return  # stored already (content-addressed: the same bytes)
        nuid = secrets.token_hex(11)
        subject = _chunk_subject(nuid)
        chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
        for start in range(0, len(chunks), WINDOW):
            window = chunks[start : start + WINDOW]
            await asyncio.gather(*(self.replies.publish(subject, chunk, timeout=30) for chunk in window))
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        meta = {
            "name": name,
            "bucket": names.VALUES_BUCKET,
            "nuid": nuid,
            "size": len(data),
            "chunks": len(chunks),
            "digest": f"SHA-256={digest}",
            "mtime": datetime.now(UTC).isoformat(),
            "options": {"max_chunk_size": CHUNK_BYTES},
        }
        await self.replies.publish(_meta_subject(name), json.dumps(meta).encode(), {"Nats-Rollup": "sub"})

    async def get_value(self, name: str) -> bytes:
        meta = await self._meta(name)
        if meta is None:
            raise NotFound(f"value {name} is not in the object store {names.VALUES_BUCKET}")
        data = b"".join(await self._chunks(_chunk_subject(meta["nuid"]), int(meta.get("chunks", 0))))
        if "sha256:" + hashlib.sha256(data).hexdigest() != name or len(data) != meta.get("size"):
            raise NotFound(f"value {name} in the object store {names.VALUES_BUCKET} is damaged")
        return data

    async def _meta(self, name: str) -> dict[str, Any] | None:
        req = json.dumps({"last_by_subj": _meta_subject(name)}).encode()
        msg = await self.replies.request(self._direct, req)
        status = (msg.headers or {}).get("Status")
        if status:
            if status == "404":
                return None
            raise APIError(code=int(status), description=(msg.headers or {}).get("Description", ""))
        meta: dict[str, Any] = json.loads(msg.data)
        return None if meta.get("deleted") else meta

    async def _chunks(self, subject: str, count: int) -> list[bytes]:
        """The first `count` messages on `subject`, by batched direct gets."""
        out: list[bytes] = []
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        try:
            seq = 1
            while len(out) < count:
                batch = min(count - len(out), 64)
                req = json.dumps({"seq": seq, "next_by_subj": subject, "batch": batch}).encode()
                await self.nc.publish(self._direct, req, reply=inbox)
                got = 0
                while True:
                    msg = await sub.next_msg(timeout=10)
                    headers = msg.headers or {}
                    if headers.get("Status"):
                        break
                    out.append(msg.data)
                    got += 1
                    seq = int(headers["Nats-Sequence"]) + 1
                if headers.get("Status") != "204" or got == 0:
                    break
        finally:
            await sub.unsubscribe()
        return out[:count]
