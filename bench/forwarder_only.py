"""Column (f) of bench/run.py: certbound's own data plane with every check off. The same
listener, TLS, framing, exchange and upstream pool as `certbound run`, with a stand-in for the
checks that admits every request as it is. What (d) costs over this is the cost of the checks
(identity, token, binding, policy, decision metrics); the issue's target is d/f >= 0.90.

Lives here, not in proxy/: a certbound that can run without checks must not exist in the
package.

    .venv/bin/python bench/forwarder_only.py --config certbound.yaml
"""

from __future__ import annotations

import argparse
import asyncio

from proxy import server
from proxy.checks.pipeline import Admitted, Seen
from proxy.checks.request import Request
from proxy.config import load_settings
from proxy.dataplane.listener import DataPlane
from proxy.dataplane.pool import UpstreamPool
from proxy.errors import AuthError
from proxy.trust.identity import ClientIdentity
from proxy.trust.tls import ServerTLS


class NoChecks:
    """The checks' interface, deciding nothing: every request is admitted unchanged."""

    def admit(
        self, request: Request, from_tls: ClientIdentity | None, seen: Seen, memo: object
    ) -> Admitted:
        assert from_tls is not None  # the listener still requires a client certificate
        return Admitted(from_tls, request.target, binding="none")

    def refused(self, request: Request, refusal: AuthError, seen: Seen) -> None:
        pass

    def upstream_failed(self, request: Request, fault: AuthError, seen: Seen) -> None:
        pass

    def forwarded(self, request: Request, admitted: Admitted, seen: Seen, status: int) -> None:
        pass


async def serve(config: str) -> None:
    settings = load_settings(config)
    plane = DataPlane(
        settings,
        ServerTLS(settings.tls),
        NoChecks(),  # type: ignore[arg-type]
        UpstreamPool(settings.upstream),
    )
    await plane.listen(settings.listen.host, settings.listen.port)
    server.tune_gc()  # as `certbound run` does
    await server.until_signalled()
    plane.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    args = p.parse_args()
    choice = load_settings(args.config).listen.event_loop
    with asyncio.Runner(loop_factory=server.loop_factory(choice)) as runner:
        runner.run(serve(args.config))


if __name__ == "__main__":
    main()
