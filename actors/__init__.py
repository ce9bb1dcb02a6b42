"""The work: Dramatiq actors, dispatch to ComfyUI nodes, the ComfyUI client and the task store."""
