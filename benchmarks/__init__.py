"""fastorals benchmark suites. Run ``python -m benchmarks.run --help``."""
