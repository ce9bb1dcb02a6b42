"""Real Consul, Nomad and Nomad Autoscaler agents: binary lookup and agent processes for local runs
and tests."""
