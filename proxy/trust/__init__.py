"""The certificate side: TLS contexts, handshake refusals, revocation, client identity."""
