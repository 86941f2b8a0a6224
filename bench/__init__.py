"""Benchmarks: `python -m bench [name ...]` runs bench/<name>.py main(argv); no name runs them all."""
