"""Streaming: the ASW buffer, the samplers, `StreamEditor` (the one editing API), the registry
of streams that live across queued jobs, and whole-file editing."""
