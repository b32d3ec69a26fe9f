"""Speed benchmarks: attention backends and the streaming editor (`speed`); and the real ComfyUI
driven over its HTTP API: the client and launcher (`comfyui`), `make demo` (`demo`), and the node
graph's cost against the core (`comfyui_bench`)."""
