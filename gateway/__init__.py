"""HTTP in, nothing else: the Starlette gateway serving REST API v1 (arrives with the core service)."""
