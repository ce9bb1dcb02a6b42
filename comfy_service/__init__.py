"""comfy-service: ComfyUI workflows as a stable microservice across many GPUs."""

__version__ = "0.1.0"
