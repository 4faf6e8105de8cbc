"""Mozilla Server Side TLS 5.7 profiles for the mTLS listener (tls.profile): which protocol
versions, cipher suites and key-exchange groups a handshake may use. Data and one decision;
building the OpenSSL context from them is tls.py's job.
"""

from __future__ import annotations

from dataclasses import dataclass

# https://ssl-config.mozilla.org/guidelines/5.7.json. TLS 1.3 suites are the same in both.
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
# The profile's TLS 1.2 list without its DHE-RSA suites: they need finite-field parameters
# (ffdhe2048) that OpenSSL only uses when given some, and every client the profile names
# has ECDHE. A subset of the profile's list is still the profile.
INTERMEDIATE_TLS12_SUITES = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
GROUPS = "X25519:P-256:P-384"  # both profiles; OpenSSL's default adds P-521, X448, ffdhe*


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    min_version: str  # "1.2" | "1.3"
    tls12_suites: str  # OpenSSL cipher string; empty when TLS 1.2 is not offered
    groups: str = GROUPS
    tls13_suites: str = TLS13_SUITES


INTERMEDIATE = Profile("intermediate", "1.2", INTERMEDIATE_TLS12_SUITES)
MODERN = Profile("modern", "1.3", "")
PROFILES = {profile.name: profile for profile in (INTERMEDIATE, MODERN)}


def lowest_version(profile: str, min_version: str) -> str:
    """The lowest TLS version offered: the profile's, or tls.min_version when it is higher.
    Call after version_conflict() found none."""
    floor = PROFILES[profile].min_version
    return max(floor, min_version or floor)


def version_conflict(profile: str, min_version: str) -> str | None:
    """Why tls.min_version cannot go with tls.profile, or None. min_version may raise the
    intermediate profile's floor to 1.3; it cannot lower modern's."""
    chosen = PROFILES.get(profile)
    if chosen is None or not min_version:
        return None
    if min_version < chosen.min_version:
        return (
            f'tls.min_version: "{min_version}" conflicts with tls.profile: {profile} '
            f"(TLS {chosen.min_version} and later only); leave tls.min_version unset, "
            "or use tls.profile: intermediate to accept TLS 1.2"
        )
    return None
