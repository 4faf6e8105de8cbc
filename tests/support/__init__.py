"""Helpers the tests share: real servers, PKI, clients. Fixtures stay in conftest.py."""
