"""Files: video in and out (PyAV, streamed), checkpoints (safetensors), atomic writes."""
