"""`certbound audit report`: who replayed what, from audit JSON lines.

Reads files or stdin line by line (one pod's log, several pods' logs concatenated, `kubectl
logs --prefix/--timestamps` output: anything before the first `{` is ignored) and keeps, for
every token refused for a binding mismatch, the certificates that presented it. Memory is
bounded whatever the input: lines longer than MAX_LINE_BYTES are skipped without being held,
and the tokens, certificates per token and peers per certificate kept are capped (what did
not fit is counted and reported). Unreadable lines are counted, never fatal.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

MAX_LINE_BYTES = 64 * 1024
MAX_TOKENS = 20_000
MAX_CERTS_PER_TOKEN = 16
MAX_PEERS = 16
MISMATCH = "thumbprint_mismatch"
_DURATION = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(slots=True)
class Presentations:
    """One certificate's presentations of one token (or of any token, per certificate)."""

    count: int = 0
    first: str = ""
    last: str = ""
    peers: list[str] = field(default_factory=list)  # at most MAX_PEERS: a list is smaller
    peers_dropped: bool = False

    def add(self, time: str, remote: str) -> None:
        self.count += 1
        if not self.first or time < self.first:
            self.first = time
        if time > self.last:
            self.last = time
        if remote and remote not in self.peers:
            if len(self.peers) < MAX_PEERS:
                self.peers.append(remote)
            else:
                self.peers_dropped = True


@dataclass(slots=True)
class TokenReplays:
    issuer: str
    token_id: str
    subject: str
    client_id: str
    bound_to: str
    foreign: dict[str, Presentations] = field(default_factory=dict)
    certs_dropped: int = 0


@dataclass(slots=True)
class Report:
    lines: int = 0
    unreadable: int = 0
    mismatches: int = 0
    before_since: int = 0
    tokens: dict[tuple[str, str], TokenReplays] = field(default_factory=dict)
    tokens_dropped: int = 0  # mismatch lines of tokens beyond MAX_TOKENS
    # per presenting certificate: every token key it tried (capped), and its presentations
    certificates: dict[str, tuple[set[tuple[str, str]], Presentations]] = field(
        default_factory=dict
    )

    def add(self, entry: dict[str, Any]) -> None:
        self.mismatches += 1
        issuer = _text(entry.get("issuer")) or _text(entry.get("iss"))
        token_id = _text(entry.get("token_id")) or _text(entry.get("jti"))
        bound_to = _text(entry.get("cnf_thumbprint"))
        presented = _text(entry.get("thumbprint"))
        time, remote = _text(entry.get("time")), _text(entry.get("remote"))
        if not token_id:  # an audit line from before token_id, of a token without jti
            token_id = f"(no id; sub {_text(entry.get('sub'))}, bound to {bound_to[:12]})"
        key = (issuer, token_id)
        token = self.tokens.get(key)
        if token is None:
            if len(self.tokens) >= MAX_TOKENS:
                self.tokens_dropped += 1
                return
            token = self.tokens[key] = TokenReplays(
                issuer,
                token_id,
                _text(entry.get("sub")),
                _text(entry.get("client_id")),
                bound_to,
            )
        seen = token.foreign.get(presented)
        if seen is None:
            if len(token.foreign) >= MAX_CERTS_PER_TOKEN:
                token.certs_dropped += 1
                return
            seen = token.foreign[presented] = Presentations()
        seen.add(time, remote)
        # Bounded by the pairs kept above: at most MAX_TOKENS * MAX_CERTS_PER_TOKEN.
        cert = self.certificates.get(presented)
        if cert is None:
            cert = self.certificates[presented] = (set(), Presentations())
        cert[0].add(key)
        cert[1].add(time, remote)


def _text(value: object) -> str:
    return value[:512] if isinstance(value, str) else ""


def parse_since(value: str, now: dt.datetime | None = None) -> str:
    """`--since`: a duration back from now (`90m`, `2h`, `1d`) or an ISO-8601 time; returned
    in the audit log's own form (`2026-01-02T03:04:05Z`), which sorts as text."""
    now = now or dt.datetime.now(dt.UTC)
    match = _DURATION.fullmatch(value.strip())
    if match is not None:
        moment = now - dt.timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    else:
        try:
            moment = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"--since {value!r}: expected a duration (30m, 2h, 1d) or a time "
                "(2026-01-02T03:04:05Z)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_lines(stream: IO[bytes]) -> Iterator[bytes | None]:
    """Lines of at most MAX_LINE_BYTES; None for a longer one, which is skipped unheld."""
    while True:
        line = stream.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while True:  # drain the rest of the line without keeping it
                rest = stream.readline(MAX_LINE_BYTES)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
            continue
        yield line


def build_report(lines: Iterable[bytes | None], since: str = "") -> Report:
    report = Report()
    for line in lines:
        report.lines += 1
        if line is None:
            report.unreadable += 1
            continue
        start = line.find(b"{")
        if start < 0:
            if line.strip():
                report.unreadable += 1
            continue
        if MISMATCH.encode() not in line:
            continue  # not a binding mismatch: no need to parse it
        try:
            entry = json.loads(line[start:])
        except ValueError:  # UnicodeDecodeError is one too
            report.unreadable += 1
            continue
        if not isinstance(entry, dict) or entry.get("log") != "audit":
            continue
        if entry.get("reason") != MISMATCH:
            continue
        if since and _text(entry.get("time")) < since:
            report.before_since += 1
            continue
        report.add(entry)
    return report


def _summary(report: Report) -> dict[str, Any]:
    return {
        "lines": report.lines,
        "unreadable_lines": report.unreadable,
        "binding_mismatches": report.mismatches,
        "before_since": report.before_since,
        "truncated": {
            "tokens_not_tracked": report.tokens_dropped,
            "certificates_not_tracked": sum(t.certs_dropped for t in report.tokens.values()),
        },
    }


def _tokens(report: Report) -> Iterator[dict[str, Any]]:
    """Most foreign certificates first; one token's entry at a time, so the output is never
    held whole."""
    ranked = sorted(
        report.tokens.values(),
        key=lambda t: (-len(t.foreign), -sum(p.count for p in t.foreign.values()), t.token_id),
    )
    for t in ranked:
        yield {
            "issuer": t.issuer,
            "token_id": t.token_id,
            "subject": t.subject,
            "client_id": t.client_id,
            "bound_to": t.bound_to,
            "presentations": sum(p.count for p in t.foreign.values()),
            "first_seen": min(p.first for p in t.foreign.values()),
            "last_seen": max(p.last for p in t.foreign.values()),
            "presented_by": [
                _presentations(thumbprint, p)
                for thumbprint, p in sorted(t.foreign.items(), key=lambda i: i[1].first)
            ],
        }


def _certificates(report: Report) -> Iterator[dict[str, Any]]:
    ranked = sorted(report.certificates.items(), key=lambda c: (-len(c[1][0]), -c[1][1].count))
    for thumbprint, (keys, p) in ranked:
        yield {**_presentations(thumbprint, p), "distinct_tokens": len(keys)}


def _presentations(thumbprint: str, p: Presentations) -> dict[str, Any]:
    return {
        "thumbprint": thumbprint,
        "count": p.count,
        "first_seen": p.first,
        "last_seen": p.last,
        "peers": sorted(p.peers) + (["..."] if p.peers_dropped else []),
    }


def as_json(report: Report) -> Iterator[str]:
    """One JSON document, written a token at a time."""
    summary = json.dumps(_summary(report), indent=2)
    yield summary[:-2] + ',\n  "tokens": ['
    for index, token in enumerate(_tokens(report)):
        yield ("," if index else "") + "\n    " + json.dumps(token)
    yield '\n  ],\n  "certificates": ['
    for index, cert in enumerate(_certificates(report)):
        yield ("," if index else "") + "\n    " + json.dumps(cert)
    yield "\n  ]\n}\n"


def as_text(report: Report) -> Iterator[str]:
    data = _summary(report)
    yield (
        f"certbound audit report: {data['lines']} lines read, {data['unreadable_lines']} "
        f"unreadable (skipped), {data['binding_mismatches']} binding mismatches"
        + (f", {data['before_since']} before --since" if data["before_since"] else "")
        + "\n"
    )
    truncated = data["truncated"]
    if truncated["tokens_not_tracked"] or truncated["certificates_not_tracked"]:
        yield (
            f"  (bounded: {truncated['tokens_not_tracked']} mismatches of tokens beyond "
            f"{MAX_TOKENS} and {truncated['certificates_not_tracked']} of certificates beyond "
            f"{MAX_CERTS_PER_TOKEN} per token were not tracked)\n"
        )
    yield f"\nTokens presented with a certificate they are not bound to: {len(report.tokens)}\n"
    for t in _tokens(report):
        certs = len(t["presented_by"])
        lines = [
            "",
            f"token {t['token_id']}  (issuer {t['issuer'] or '-'})",
            f"  subject      {t['subject'] or '-'}",
            f"  client       {t['client_id'] or '-'}",
            f"  bound to     {t['bound_to'] or '(none)'}",
            f"  presented by {certs} other certificate{'s' if certs != 1 else ''}, "
            f"{t['presentations']} times, {t['first_seen']} .. {t['last_seen']}",
        ]
        for p in t["presented_by"]:
            lines.append(
                f"    {p['thumbprint']}  {p['count']:>5}x  {p['first_seen']} .. {p['last_seen']}"
                f"  from {', '.join(p['peers']) or '-'}"
            )
        yield "\n".join(lines) + "\n"
    yield (f"\nCertificates that presented tokens bound to others: {len(report.certificates)}\n")
    for c in _certificates(report):
        tokens = c["distinct_tokens"]
        yield (
            f"  {c['thumbprint']}  {tokens} distinct token{'s' if tokens != 1 else ''}, "
            f"{c['count']} times, {c['first_seen']} .. {c['last_seen']}"
            f"  from {', '.join(c['peers']) or '-'}\n"
        )
