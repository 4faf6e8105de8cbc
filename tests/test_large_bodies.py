"""Bodies are streamed both ways: a 1 GiB upload and a 512 MiB download through a real
`certbound run` process, driven by curl, while the proxy's peak memory stays small."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.support.process import peak_rss, proxy_process
from tests.support.stack import PKI, Issuer, Upstream, process_config

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

GIB = 1 << 30
MAX_PEAK_RSS_MB = 150  # the proxy starts at ~50 MB; a buffered body would add hundreds


def curl_args(pki: PKI, token: str) -> list[str]:
    curl = shutil.which("curl")
    assert curl, "curl is required (scripts/test.sh installs it)"
    cert, key = pki.files("alice")
    return [
        curl,
        "-sS",
        "--fail",
        "--cacert",
        pki.ca_file,
        "--cert",
        cert,
        "--key",
        key,
        "-H",
        f"Authorization: Bearer {token}",
    ]


async def test_one_gib_upload_and_512_mib_download_stream_through(
    pki: PKI, issuer: Issuer, upstream: Upstream, tmp_path: Path
) -> None:
    token = issuer.mint(pki.alice)
    with proxy_process(tmp_path, process_config(pki, issuer, upstream, tmp_path)) as proc:
        # Upload: curl reads the body from a pipe, so it is sent chunked, of unknown length.
        read_end, write_end = os.pipe()
        producer = await asyncio.create_subprocess_exec(
            "head", "-c", str(GIB), "/dev/zero", stdout=write_end
        )
        upload = await asyncio.create_subprocess_exec(
            *curl_args(pki, token),
            "-T",
            "-",
            "-o",
            "/dev/null",
            proc.url + "/upload",
            stdin=read_end,
            stderr=asyncio.subprocess.PIPE,
        )
        os.close(read_end)
        os.close(write_end)
        _, err = await asyncio.wait_for(upload.communicate(), 120)
        await producer.wait()
        assert upload.returncode == 0, err
        assert upstream.seen[-1].path == "/upload"
        assert upstream.seen[-1].body_bytes == GIB

        download = await asyncio.create_subprocess_exec(
            *curl_args(pki, token),
            "-o",
            "/dev/null",
            "-w",
            "%{size_download}",
            proc.url + f"/big?bytes={GIB // 2}",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(download.communicate(), 120)
        assert download.returncode == 0 and int(out) == GIB // 2
        peak = peak_rss(proc.proc.pid) / 2**20
        print(f"certbound peak RSS after 1 GiB up and 512 MiB down: {peak:.1f} MB")
        assert peak < MAX_PEAK_RSS_MB
