"""A tiny keep-alive HTTP/1.1 upstream for the benchmarks: answers every request with a fixed
small 200 (Content-Length), without parsing more than it must. Bodies are not supported (the
benchmarks send GETs only). Uses uvloop when installed so the upstream stays cheap.

    .venv/bin/python bench/upstream.py --port 18080
"""

from __future__ import annotations

import argparse
import asyncio
import signal

BODY = b'{"ok":true,"service":"bench-upstream"}\n'
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
CLOSE_RESPONSE = RESPONSE.replace(
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
)


class _Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self._buf = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        buf = self._buf + data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head, buf = buf[:end], buf[end + 4 :]
            lower = head.lower()
            close = b"connection: close" in lower or (
                lower.startswith(b"get")
                and b"http/1.0" in lower.split(b"\r\n", 1)[0]
                and b"keep-alive" not in lower
            )
            if close:
                self._transport.write(CLOSE_RESPONSE)
                self._transport.close()
                return
            self._transport.write(RESPONSE)
        self._buf = buf


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"upstream listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
