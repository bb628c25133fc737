"""pytest-benchmark entry point: ``pytest benchmarks/ --benchmark-only`` times every case of every
suite (smoke sizes by default; ``FASTORALS_BENCH_MODE=quick|full`` for more), one benchmark group
per case with the fast path, the reference and the peers side by side."""
