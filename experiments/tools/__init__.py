"""Performance-investigation scripts (not user entry points): profile_step, row_memory; see docs/performance.md."""
