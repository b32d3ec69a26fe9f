"""Speed benchmarks: attention backends and the streaming editor (`speed`)."""
