"""Benchmarks of the gateway, run by ``specgate bench …`` (see ``gateway_bench``)."""
