"""binding.check_binding: pure, RFC 8705 §3."""

from __future__ import annotations

import pytest

from proxy.checks.binding import check_binding
from proxy.errors import AuthError, Reason

TP = "-M3tW5XN3rxQwtXFN_PsNWIt75FcwAYT5DzwqofGSoI"
OTHER = "VAlMvdCUJKy08FJvpNZgGcYL7TpnEGKL8uvsrDyVGOI"


def reason_of(cnf: object, tp: str = TP, **kw: bool) -> Reason:
    with pytest.raises(AuthError) as info:
        check_binding(cnf, tp, **kw)
    return info.value.reason


def test_matching_thumbprint_is_bound() -> None:
    assert check_binding({"x5t#S256": TP}, TP) is True


def test_other_certificate_is_thumbprint_mismatch() -> None:
    assert reason_of({"x5t#S256": OTHER}) is Reason.THUMBPRINT_MISMATCH


@pytest.mark.parametrize(
    ("cnf", "reason"),
    [
        (None, Reason.MISSING_CNF),
        ({}, Reason.MISSING_CNF),
        ({"jkt": TP}, Reason.MISSING_CNF),
        ("x5t", Reason.INVALID_CNF),
        ([TP], Reason.INVALID_CNF),
        ({"x5t#S256": None}, Reason.MISSING_CNF),
        ({"x5t#S256": 1}, Reason.INVALID_CNF),
        ({"x5t#S256": [TP]}, Reason.INVALID_CNF),
        ({"x5t#S256": TP + "="}, Reason.INVALID_CNF),
        ({"x5t#S256": TP.replace("-", "+")}, Reason.INVALID_CNF),
        ({"x5t#S256": TP + " "}, Reason.INVALID_CNF),
        ({"x5t#S256": " " + TP}, Reason.INVALID_CNF),
        ({"x5t#S256": TP[:-1]}, Reason.INVALID_CNF),
        ({"x5t#S256": TP.swapcase()}, Reason.THUMBPRINT_MISMATCH),
        ({"x5t#S256": "é" * 43}, Reason.INVALID_CNF),
    ],
)
def test_malformed_or_missing_cnf_is_refused(cnf: object, reason: Reason) -> None:
    assert reason_of(cnf) is reason


def test_unbound_token_passes_only_when_explicitly_allowed() -> None:
    assert check_binding(None, TP, allow_unbound=True) is False
    assert reason_of(None) is Reason.MISSING_CNF
    # Allowing unbound tokens never lets a token bound to another certificate through.
    assert reason_of({"x5t#S256": OTHER}, allow_unbound=True) is Reason.THUMBPRINT_MISMATCH
