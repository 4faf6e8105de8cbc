"""Configuration: load (YAML + CERTBOUND_* environment) and validate (every problem, with its
key path). The settings types themselves are in proxy.settings."""

from proxy.config.load import ConfigError, load_settings
from proxy.config.validate import read_nonce_key, validate

__all__ = ["ConfigError", "load_settings", "read_nonce_key", "validate"]
