"""The per-request machinery: a connection object per client (TLS, identity, flow control,
timers), HTTP/1.1 framing on a C parser, an exchange per request, and a keep-alive pool to
the workload. The checks it runs (pipeline.py) take values and never know it is there."""
