"""StreamEdit core: real-time text-driven video stream editing with a diffusion transformer.

No ComfyUI import anywhere in this package; importing it has no side effects (no CUDA
initialisation, no kernel compilation).
"""
__version__ = "0.1.0"
