"""The answer-size tests' server (``tests/support/flooding.py``) ends each answer in order.

It read a request only up to its head and closed the connection after the answer's last
byte. When the body came in a later segment (as on a loaded machine), the kernel answered that
segment with a reset, and the client lost the part of the answer it had not read yet: CI's
``test_an_answer_within_the_bound_is_read_whole[trio-stream]`` failed with
``ConnectionResetError`` in the middle of an answer that was all sent."""

from __future__ import annotations

import anyio
import pytest

from ..support.flooding import answering

pytestmark = pytest.mark.anyio


async def test_a_body_in_a_later_segment_does_not_cut_the_answer() -> None:
    body = b"b" * (4 * 2**20)
    payload = b'{"model": "m"}'
    async with answering(body, "application/json") as port:
        conn = await anyio.connect_tcp("127.0.0.1", port)
        async with conn:
            await conn.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: %d\r\n\r\n" % len(payload))
            await anyio.sleep(0.2)  # the server has the head alone
            await conn.send(payload)
            await anyio.sleep(0.5)  # the answer waits, unread, while the body arrives
            got = b""
            with anyio.fail_after(30):
                while not got.endswith(b"\r\n0\r\n\r\n"):
                    got += await conn.receive()
    head, _, chunked = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert chunked.count(b"b") == len(body)
