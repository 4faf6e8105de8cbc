"""Tokens: where the token is (extract), which keys sign it (jwks), is it genuine (jwt)."""
