"""certbound's Redis connection (proxy/tokens/resp.py): against a real redis-server (ACL user,
password, database, restart) and against servers that answer wrong, too much or never."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from proxy.tokens.resp import RedisAddress, RedisClient, RespError, command
from tests.support.redis_server import RedisServer


def client(url: str, timeout: float = 1.0) -> RedisClient:
    return RedisClient(RedisAddress.parse(url), timeout)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h", RedisAddress("h", 6379, False, "", "", 0)),
        ("rediss://u:p%40ss@h:6380/3", RedisAddress("h", 6380, True, "u", "p@ss", 3)),
        ("redis://:pw@10.0.0.1:7000/", RedisAddress("10.0.0.1", 7000, False, "", "pw", 0)),
    ],
)
def test_addresses(url: str, expected: RedisAddress) -> None:
    assert RedisAddress.parse(url) == expected
    assert "pw" not in expected.shown and "ss" not in expected.shown.split("//")[1]


@pytest.mark.parametrize(
    "url",
    [
        "http://h",
        "redis://",
        "redis://h/db",
        "redis://h?password=x",
        "redis://:secretword@h:secretport/0",
        "unix:///run/redis.sock",
    ],
)
def test_bad_addresses_are_refused_without_quoting_them(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        RedisAddress.parse(url)
    assert "secret" not in str(refused.value)


async def test_commands_with_a_password_a_database_and_pipelining(redis: RedisServer) -> None:
    c = client(redis.url.replace("/0", "/2"))
    assert await c.call(command("PING")) == b"PONG"
    replies = await asyncio.gather(
        *(c.call(command("SET", f"k{i % 5}", "1", "NX", "PX", "60000")) for i in range(50))
    )
    assert replies.count(b"OK") == 5 and replies.count(None) == 45  # in order, one each
    assert redis.command("-n", "2", "DBSIZE") == "5"
    assert redis.command("-n", "0", "DBSIZE") == "0"
    await c.close()


async def test_an_acl_user_and_a_wrong_password(redis: RedisServer) -> None:
    redis.command("ACL", "SETUSER", "certbound", "on", ">user-pass", "~certbound:*", "+set")
    c = client(f"redis://certbound:user-pass@127.0.0.1:{redis.port}/0")
    assert await c.call(command("SET", "certbound:x", "1", "NX", "PX", "1000")) == b"OK"
    with pytest.raises(RespError, match="NOPERM"):  # the ACL allows SET on certbound:* only
        await c.call(command("SET", "other", "1"))
    wrong = client(f"redis://certbound:not-it@127.0.0.1:{redis.port}/0")
    with pytest.raises(RespError):
        await wrong.call(command("PING"))
    await c.close()
    await wrong.close()


async def test_a_restarted_redis_is_found_again(redis: RedisServer) -> None:
    c = client(redis.url)
    assert await c.call(command("PING")) == b"PONG"
    redis.stop()
    with pytest.raises((RespError, OSError)):
        await c.call(command("PING"))
    redis.start()
    assert await c.call(command("PING")) == b"PONG"
    await c.close()


async def fake_redis(answer: Callable[[bytes], bytes | None]) -> tuple[asyncio.Server, str]:
    """A server speaking just enough: `answer` maps each read to what it writes back."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            reply = answer(data)
            if reply is not None:
                writer.write(reply)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"*1\r\n$2\r\nOK\r\n", "unexpected reply type"),
        (b"$2\r\nOKxx", "broken reply"),
        (b":nope\r\n", "broken reply"),
        (b"+" + b"x" * 70000, "reply too long"),
        (b"$999999\r\n", "broken reply"),
        (b"-ERR no\r\n", "ERR no"),
    ],
    ids=["array", "bad_bulk", "bad_integer", "flood", "huge_bulk", "error"],
)
async def test_a_wrong_answer_fails_the_command_and_closes_the_connection(
    reply: bytes, error: str
) -> None:
    server, url = await fake_redis(lambda _: reply)
    c = client(url)
    try:
        with pytest.raises(RespError, match=error):
            await c.call(command("PING"))
    finally:
        await c.close()
        server.close()


async def test_a_silent_server_costs_the_timeout_and_later_commands_reconnect() -> None:
    answering = False

    def answer(_: bytes) -> bytes | None:
        return b"+PONG\r\n" if answering else None

    server, url = await fake_redis(answer)
    c = client(url, timeout=0.2)
    try:
        call: Awaitable[object] = c.call(command("PING"))
        with pytest.raises(TimeoutError):
            await call
        answering = True
        assert await c.call(command("PING")) == b"PONG"  # on a new connection
    finally:
        await c.close()
        server.close()
