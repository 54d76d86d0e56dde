"""Benchmarks and load tests of the service (a package so that `make bench` can run
`python -m bench.run` and uvicorn can import `bench.bare_app` and `bench.instrumented`)."""
