"""One node's view of itself: GPU and queue load, Consul registration and health checks."""
