"""Command line: argument parsing and dispatch only."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from proxy import __version__

if TYPE_CHECKING:
    from proxy.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="certbound",
        description="Sidecar proxy for OAuth 2.0 certificate-bound access tokens (RFC 8705).",
    )
    parser.add_argument("--version", action="version", version=f"certbound {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="serve traffic")
    run.add_argument("--config", required=True, help="YAML configuration file")
    run.add_argument(
        "--grace-seconds", type=float, default=30.0, help="drain time on SIGTERM (default 30)"
    )

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    check.add_argument("file")

    thumb = sub.add_parser("thumbprint", help="print the x5t#S256 of a PEM certificate")
    thumb.add_argument("cert")

    explain = sub.add_parser(
        "explain",
        help="walk a certificate, token and DPoP proof through the decision, step by step",
    )
    explain.add_argument("--config", required=True)
    explain.add_argument(
        "--cert", help="the client's PEM certificate (none: a DPoP client without one)"
    )
    explain.add_argument(
        "--token",
        help="the access token, @FILE, or - for stdin (the default unless --dpop is -); "
        "none: the certificate or proof alone",
    )
    explain.add_argument(
        "--dpop", metavar="PROOF", help="the DPoP header's value, @FILE, or - for stdin"
    )
    explain.add_argument("--method", default="GET")
    explain.add_argument(
        "--url", help="the URL the client used (htu is compared to it); sets the path too"
    )
    explain.add_argument("--path", help="the path the proxy sees (default: --url's path, else /)")

    audit = sub.add_parser("audit", help="read certbound audit logs")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    report = audit_sub.add_parser(
        "report",
        help="who replayed what: tokens refused for a binding mismatch and the certificates "
        "that presented them",
    )
    report.add_argument(
        "files", nargs="*", default=["-"], help="audit log files (JSON lines); - or none: stdin"
    )
    report.add_argument("--json", action="store_true", help="machine-readable output")
    report.add_argument(
        "--since", default="", help="only lines from then on: 30m, 2h, 1d or 2026-01-02T03:04:05Z"
    )

    inject = sub.add_parser(
        "kube-inject", help="add the certbound sidecar to the pod templates in Kubernetes YAML"
    )
    inject.add_argument("-f", "--filename", required=True, help="YAML file, or - for stdin")
    inject.add_argument("--values", help="chart-style values: proxy.*, tls.*, inject.*")
    inject.add_argument(
        "--all", action="store_true", help='every pod template unless certbound.io/inject: "false"'
    )
    inject.add_argument(
        "--no-services", action="store_true", help="leave Services aimed at the workload's port"
    )
    inject.add_argument(
        "--strict",
        action="store_true",
        help="exit 2 and write nothing on a warning (a Service left around certbound)",
    )
    inject.add_argument("--mode", choices=["native", "container"], help="overrides inject.mode")

    injector = sub.add_parser("injector", help="serve the mutating admission webhook over TLS")
    injector.add_argument("--config", required=True, help="injector YAML configuration")

    demo = sub.add_parser("demo", help="run everything on a throwaway PKI, print curl lines")
    demo.add_argument("--dir", default="certs/demo", help="where to write the demo PKI")
    demo.add_argument("--port", type=int, default=8443, help="mTLS port of the proxy")
    demo.add_argument("--admin-port", type=int, default=9090)
    demo.add_argument("--exit-after", type=float, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "thumbprint":
        return _thumbprint(args.cert)
    if args.command == "check-config":
        return _check_config(args.file)
    if args.command == "run":
        return _run(args.config, args.grace_seconds)
    if args.command == "explain":
        return _explain(args)
    if args.command == "audit":
        return _audit_report(args.files, as_json=args.json, since=args.since)
    if args.command == "kube-inject":
        from proxy.inject import commands

        return commands.kube_inject(
            args.filename,
            args.values,
            inject_all=args.all,
            move_services=not args.no_services,
            strict=args.strict,
            mode=args.mode,
            stdin=sys.stdin,
            stdout=sys.stdout,
            stderr=sys.stderr,
        )
    if args.command == "injector":
        from proxy.inject import commands

        return commands.injector(args.config)
    if args.command == "demo":
        from proxy.tools import demo

        return demo.main(Path(args.dir), args.port, args.admin_port, args.exit_after)
    return 2


def _thumbprint(path: str) -> int:
    from proxy.trust.identity import thumbprint_of_pem

    try:
        print(thumbprint_of_pem(Path(path).read_bytes()))
    except OSError as exc:
        print(f"certbound: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError:
        print(f"certbound: {path} holds no PEM certificate", file=sys.stderr)
        return 2
    return 0


def _load(path: str) -> Settings | None:
    """Settings with the TLS files loaded once to prove they work, or None (problems printed)."""
    from proxy.config import ConfigError, load_settings
    from proxy.trust.tls import TLSConfigError, build_server_context, crl_sources, load_revocation

    try:
        settings = load_settings(path)
        build_server_context(settings.tls)  # PEM that parses but does not load is an error too
        load_revocation(settings.tls)  # and a CRL its CA did not sign
        crl_sources(settings.tls)  # and fetch_crls with nowhere to fetch from
    except ConfigError as exc:
        print(f"certbound: invalid configuration in {path}:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None
    except TLSConfigError as exc:
        print(f"certbound: invalid configuration in {path}:\n  {exc}", file=sys.stderr)
        return None
    return settings


def _explain(args: argparse.Namespace) -> int:
    from cryptography import x509

    from proxy.tools.explain import Request, UsageError, explain, request_target

    def usage(message: str) -> int:
        print(f"certbound: explain: {message}", file=sys.stderr)
        return 2

    if args.cert is None and args.dpop is None:
        return usage(
            "give --cert (the client's certificate), --dpop (its DPoP proof), or both: "
            "a request without either is refused before any token is read"
        )
    if args.dpop is not None and args.url is None:
        return usage("--dpop needs --url, the URL the client used: the proof's htu must name it")
    token_arg = args.token
    if token_arg is None:
        token_arg = "" if args.dpop == "-" else "-"
    elif token_arg == "-" and args.dpop == "-":  # noqa: S105 - "-" means stdin
        return usage("--token and --dpop cannot both read stdin")
    settings = _load(args.config)
    if settings is None:
        return 2
    certificate = None
    if args.cert is not None:
        try:
            certificate = x509.load_pem_x509_certificate(Path(args.cert).read_bytes())
        except OSError as exc:
            print(f"certbound: cannot read {args.cert}: {exc.strerror}", file=sys.stderr)
            return 2
        except ValueError:
            print(f"certbound: {args.cert} holds no PEM certificate", file=sys.stderr)
            return 2
    try:
        # An empty stdin from a terminal means: no token, check what else was given.
        token = _credential(token_arg, "--token", empty_on_tty=args.token is None)
        proof = _credential(args.dpop or "", "--dpop", empty_on_tty=False)
        target = request_target(settings, args.url or "", args.path)
    except UsageError as exc:
        return usage(str(exc))
    for scheme in ("bearer ", "dpop "):  # a pasted Authorization value
        if token.lower().startswith(scheme):
            token = token[len(scheme) :].strip()
    if proof.lower().startswith("dpop:"):  # a pasted header line
        proof = proof[5:].strip()
    request = Request(
        certificate=certificate,
        token=token,
        method=args.method,
        target=target,
        proof=proof,
        url=args.url or "",
    )
    return asyncio.run(explain(settings, request, print))


def _credential(value: str, option: str, *, empty_on_tty: bool) -> str:
    """An option's value, the contents of @FILE, or stdin for -; stripped."""
    from proxy.tools.explain import UsageError

    if value == "-":
        if empty_on_tty and sys.stdin.isatty():
            return ""
        value = sys.stdin.read()
    elif value.startswith("@"):
        try:
            value = Path(value[1:]).read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            raise UsageError(f"{option}: cannot read {value[1:]}: {exc.strerror}") from None
    return value.strip()


def _audit_report(files: list[str], *, as_json: bool, since: str) -> int:
    import contextlib
    import itertools

    from proxy.tools import audit_report

    try:
        cutoff = audit_report.parse_since(since) if since else ""
    except ValueError as exc:
        print(f"certbound: audit report: {exc}", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        streams = []
        for name in files:
            if name == "-":
                streams.append(sys.stdin.buffer)
                continue
            try:
                streams.append(stack.enter_context(Path(name).open("rb")))
            except OSError as exc:
                print(
                    f"certbound: audit report: cannot read {name}: {exc.strerror}", file=sys.stderr
                )
                return 2
        lines = itertools.chain.from_iterable(audit_report.read_lines(s) for s in streams)
        report = audit_report.build_report(lines, cutoff)
    sys.stdout.writelines(audit_report.as_json(report) if as_json else audit_report.as_text(report))
    return 0


def _check_config(path: str) -> int:
    if _load(path) is None:
        return 2
    print(f"{path}: config OK")
    return 0


def _run(path: str, grace_seconds: float) -> int:
    from proxy.config import ConfigError, load_settings
    from proxy.workers import (
        MULTIPROC_ENV,
        WORKER_ENV,
        prepare_metrics_dir,
        supervise,
        worker_count,
    )

    is_worker = WORKER_ENV in os.environ
    try:
        workers = 1 if is_worker else worker_count(load_settings(path).listen.workers)
    except ConfigError:
        workers = 1  # _load below reports every problem
    if workers > 1:
        # Before prometheus_client is first imported: the supervisor and its workers must
        # all see the same, emptied, multiprocess directory.
        os.environ[MULTIPROC_ENV] = prepare_metrics_dir()
    settings = _load(path)
    if settings is None:
        return 2
    if workers > 1:
        return supervise(path, workers, grace_seconds)

    from proxy import audit, server

    listener = audit.setup_logging(settings.log.level)
    try:
        with asyncio.Runner(loop_factory=server.loop_factory(settings.listen.event_loop)) as runner:
            runner.run(server.serve(settings, grace_seconds, shared_ports=is_worker))
    except OSError as exc:
        print(f"certbound: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        listener.stop()
    return 0
