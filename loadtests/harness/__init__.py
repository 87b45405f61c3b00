"""The harness that starts and measures real processes: the embedded Redis and the server.

Used by the load-test runner, the tuner's live server, the benchmarks, the CLI and the tests; never
by the server's request path.
"""
