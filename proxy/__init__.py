"""certbound: a sidecar reverse proxy for OAuth 2.0 certificate-bound access tokens (RFC 8705)."""

__version__ = "0.1.0"
