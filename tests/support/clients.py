"""The peers tests drive a running certbound with: curl (its -i output read back) and Python's
ssl with a test certificate."""

from __future__ import annotations

import asyncio
import shutil
import ssl

from tests.support.stack import PKI


async def curl(pki: PKI, *args: str, who: str | None = "alice") -> str:
    """curl's output (-i: heads too). Run without blocking: the upstream shares our loop."""
    binary = shutil.which("curl")
    assert binary, "curl is required (scripts/test.sh installs it)"
    command = [binary, "-sS", "-i", "--cacert", pki.ca_file]
    if who is not None:
        cert, key = pki.files(who)
        command += ["--cert", cert, "--key", key]
    done = await asyncio.create_subprocess_exec(
        *command, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(done.communicate(), 60)
    return out.decode("latin-1") + err.decode("latin-1")


def status_and_headers(output: str) -> tuple[int, dict[str, str], str]:
    """The last response in curl -i output (a 100 Continue may come first)."""
    head, _, body = output.rpartition("HTTP/1.1 ")[2].partition("\r\n\r\n")
    lines = head.split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[0]), headers, body


def client_ssl(pki: PKI, who: str = "alice") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca_file)
    ctx.load_cert_chain(*pki.files(who))
    return ctx
