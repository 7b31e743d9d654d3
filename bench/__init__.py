"""Benchmark: fleet vs. a Scrapy baseline on the same generated site, served on loopback.

Run with ``make bench`` (``python -m bench.run``); see docs/benchmarks.md.
"""
