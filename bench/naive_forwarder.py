"""Baseline (c) of bench/run.py: an aiohttp reverse proxy that terminates mTLS (client
certificate required, same files as certbound) and forwards to the upstream over a keep-alive
pool, with no token, binding or header checks, no metrics and no audit. What certbound costs
over this is the cost of its checks and bookkeeping.

    .venv/bin/python bench/naive_forwarder.py --port 18444 --upstream http://127.0.0.1:18080 \
        --cert server.pem --key server.key --ca ca.pem
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl

import aiohttp
from aiohttp import web

HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "host"})


def build_app(upstream: str) -> web.Application:
    app = web.Application()
    state: dict[str, aiohttp.ClientSession] = {}

    async def startup(_: web.Application) -> None:
        state["s"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100, keepalive_timeout=30),
            auto_decompress=False,
        )

    async def cleanup(_: web.Application) -> None:
        await state["s"].close()

    async def forward(request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        async with state["s"].request(
            request.method, upstream + request.raw_path, headers=headers, data=None
        ) as resp:
            body = await resp.read()
            out = {
                k: v
                for k, v in resp.headers.items()
                if k.lower() not in HOP and k.lower() != "content-length"
            }
            return web.Response(status=resp.status, body=body, headers=out)

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def serve(args: argparse.Namespace) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(args.cert, args.key)
    ctx.load_verify_locations(cafile=args.ca)
    runner = web.AppRunner(build_app(args.upstream.rstrip("/")), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, ssl_context=ctx, backlog=1024)
    await site.start()
    print(f"naive forwarder on https://{args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    asyncio.run(serve(p.parse_args()))  # default loop, like certbound


if __name__ == "__main__":
    main()
