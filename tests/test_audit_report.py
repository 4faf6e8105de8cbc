"""`certbound audit report` on hostile and large input: long lines, junk, --since, and bounded
memory on a large log streamed through a real process."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys

import pytest

from proxy.tools import audit_report
from proxy.tools.audit_report import (
    MAX_LINE_BYTES,
    MAX_TOKENS,
    build_report,
    parse_since,
    read_lines,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def line(token: str, cert: str, time: str = "2026-01-01T00:00:00Z", **extra: str) -> bytes:
    entry = {
        "time": time, "log": "audit", "outcome": "rejected", "reason": "thumbprint_mismatch",
        "remote": "10.0.0.9", "thumbprint": cert, "cnf_thumbprint": "ALICE", "sub": "alice",
        "client_id": "app", "issuer": "corp", "token_id": token, **extra,
    }  # fmt: skip
    return json.dumps(entry).encode() + b"\n"


def test_an_endless_line_is_skipped_without_being_held_and_counted() -> None:
    stream = io.BytesIO(b"x" * (MAX_LINE_BYTES * 5) + b"\n" + line("t", "BOB"))
    lines = list(read_lines(stream))
    assert lines[0] is None and len(lines) == 2
    report = build_report(lines)
    assert (report.unreadable, report.mismatches) == (1, 1)


def test_other_log_lines_reasons_and_audit_lines_of_old_versions() -> None:
    old = json.dumps(
        {"log": "audit", "reason": "thumbprint_mismatch", "jti": "j", "thumbprint": "BOB",
         "cnf_thumbprint": "ALICE", "iss": "https://i"}
    )  # fmt: skip
    lines = [
        b'{"log":"certbound.server","message":"thumbprint_mismatch is not a log line"}\n',
        line("t", "BOB").replace(b"thumbprint_mismatch", b"expired"),
        b"2026-01-01T00:00:00.1Z " + old.encode() + b"\n",  # kubectl logs --timestamps
        b'{"log":"audit","reason":"thumbprint_mismatch","thumbprint":7}\n',  # wrong types
        b"\n",
    ]
    report = build_report(lines)
    assert (report.unreadable, report.mismatches) == (0, 2)
    keys = set(report.tokens)
    assert ("https://i", "j") in keys  # no token_id or issuer name yet: jti and iss


def test_since_takes_a_duration_or_a_time() -> None:
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert parse_since("90m", now) == "2026-01-02T01:34:05Z"
    assert parse_since("1d", now) == "2026-01-01T03:04:05Z"
    assert parse_since("2026-01-02T01:00:00+01:00") == "2026-01-02T00:00:00Z"
    with pytest.raises(ValueError, match="--since 'soon'"):
        parse_since("soon")


def test_tokens_beyond_the_bound_are_counted_not_kept() -> None:
    report = build_report(line(f"t{i}", "BOB") for i in range(MAX_TOKENS + 10))
    assert len(report.tokens) == MAX_TOKENS and report.tokens_dropped == 10
    assert "10 mismatches of tokens beyond" in "".join(audit_report.as_text(report))
    json.loads("".join(audit_report.as_json(report)))


GENERATOR = """
import json, sys
out = sys.stdout.buffer
filler = json.dumps({"time": "2026-01-01T00:00:00Z", "log": "audit", "outcome": "forwarded",
                     "reason": "ok", "path": "/" + "p" * 300}).encode() + b"\\n"
for i in range(int(sys.argv[1])):
    entry = {"time": "2026-01-01T00:00:%02dZ" % (i % 60), "log": "audit",
             "outcome": "rejected", "reason": "thumbprint_mismatch",
             "remote": "10.0.%d.%d" % (i % 7, i % 251),
             "thumbprint": "CERT%05d" % (i % 997), "cnf_thumbprint": "OWNER%07d" % i,
             "sub": "user%d" % i, "client_id": "app", "issuer": "corp", "token_id": "tok%09d" % i}
    out.write(json.dumps(entry).encode() + b"\\n" + filler * 3 + b"not json at all\\n")
"""
# VmHWM, not getrusage's ru_maxrss: Linux carries the maximum across exec, so a child of a big
# pytest process would report pytest's peak (281 MiB in a full run) instead of its own.
MEASURE = """
import sys
from proxy.cli import main
code = main(["audit", "report", "-", "--json"])
with open("/proc/self/status") as status:
    peak = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
print(peak, file=sys.stderr)
sys.exit(code)
"""


def test_a_large_log_from_stdin_is_read_in_bounded_memory() -> None:
    """~300 MB and a million lines through a pipe: the distinct tokens exceed the bound, and
    the report's peak RSS stays well under the input's size."""
    count = 200_000
    producer = subprocess.Popen(
        [sys.executable, "-c", GENERATOR, str(count)], stdout=subprocess.PIPE
    )
    done = subprocess.run(
        [sys.executable, "-c", MEASURE],
        stdin=producer.stdout,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert producer.stdout is not None
    producer.stdout.close()
    assert producer.wait(timeout=60) == 0
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    assert data["lines"] == count * 5
    assert data["unreadable_lines"] == count
    assert data["binding_mismatches"] == count
    assert data["truncated"]["tokens_not_tracked"] == count - MAX_TOKENS
    peak_mib = int(done.stderr.decode().strip().splitlines()[-1]) / 1024
    print(f"peak RSS {peak_mib:.0f} MiB")
    assert peak_mib < 200, f"peak RSS {peak_mib:.0f} MiB"
