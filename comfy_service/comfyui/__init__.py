"""ComfyUI's protocol rules (object_info, prompt validation), shared by gateway and simulator."""
