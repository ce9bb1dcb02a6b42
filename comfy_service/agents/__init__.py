"""Real Consul and Nomad agents: binary lookup and agent processes for local runs and tests."""
