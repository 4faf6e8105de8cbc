"""Tools around the proxy: explain, audit report, demo, throwaway PKI."""
