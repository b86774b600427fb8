"""Side-by-side benchmarks of the backends (shapes, timing, FLOP accounting, the report table)."""
