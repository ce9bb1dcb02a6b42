"""comfyui_sim: a ComfyUI-compatible server that simulates execution, for tests and demos."""
