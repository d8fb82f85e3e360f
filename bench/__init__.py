"""The benchmarks; each runs as `python -m bench.NAME` from the repo root."""
