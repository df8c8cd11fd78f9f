"""Benchmark: steadyscribe's engines and the tools users would otherwise use, on audio with exact word truth.

    .venv/bin/python -m bench.run [--quick] [--out DIR]

See docs/benchmark.md.
"""
