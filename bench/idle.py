"""Hold many idle keep-alive mTLS connections open to a proxy, for bench/run.py's idle row.

Each connection completes its handshake and one request, then stays open and silent. Prints
`ready N` when all are open (N may be smaller if the proxy refused some), then holds them until
standard input closes, and prints how many are still open.

    .venv/bin/python bench/idle.py --url https://127.0.0.1:8443/x --ca ca.pem --cert alice.pem \
        --key alice.key --token-file token.txt -n 1000
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from urllib.parse import urlsplit


async def hold(args: argparse.Namespace, token: str) -> int:
    url = urlsplit(args.url)
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.load_cert_chain(args.cert, args.key)
    ctx.check_hostname = False
    request = (
        f"GET {url.path} HTTP/1.1\r\nHost: {url.hostname}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    gate = asyncio.Semaphore(32)  # handshakes in parallel, as a client pool would

    async def one() -> asyncio.StreamWriter | None:
        async with gate:
            try:
                reader, writer = await asyncio.open_connection(url.hostname, url.port, ssl=ctx)
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                return writer
            except (OSError, asyncio.IncompleteReadError, IndexError, ValueError):
                return None

    writers = [w for w in await asyncio.gather(*(one() for _ in range(args.n))) if w]
    print(f"ready {len(writers)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    still = sum(1 for w in writers if not w.is_closing())
    print(f"open {still}", flush=True)
    for w in writers:
        w.close()
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("-n", type=int, default=1000)
    args = p.parse_args()
    with open(args.token_file) as tokens:
        token = tokens.read().split()[0]
    return asyncio.run(hold(args, token))


if __name__ == "__main__":
    sys.exit(main())
