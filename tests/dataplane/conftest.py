"""The certificates and token of the socket-free connection tests, made once per session."""

from __future__ import annotations

import pytest

from tests.support.connection_driver import Certificates, make_certificates


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("clock-pki"))
