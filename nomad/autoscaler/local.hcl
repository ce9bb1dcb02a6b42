# The Nomad Autoscaler agent for a local cluster (the one `MESH=nomad make up` starts; tests/test_autoscaler.py
# runs it): it reads the comfyui group's scaling policy from Nomad (nomad/comfyui.nomad.hcl),
# asks Prometheus for the backlog and sets the group's count through Nomad. Every address is
# loopback; no cloud target is declared, so no plugin can reach outside this machine.
#
#   nomad-autoscaler agent -config nomad/autoscaler/local.hcl \
#     -nomad-address http://127.0.0.1:<nomad port> -http-bind-port <free port>
#
# The addresses below are the agents' default ports. The Prometheus address is a plugin setting
# with no command-line flag: a second `-config` file with its own `apm "prometheus"` block
# replaces it (comfy_service/agents/autoscaler_agent.py writes one).

log_level = "INFO"

# Health (/v1/health) and the agent's own metrics; loopback only.
http {
  bind_address = "127.0.0.1"
  bind_port    = 8080
}

nomad {
  address = "http://127.0.0.1:4646"
}

apm "prometheus" {
  driver = "prometheus"
  config = {
    address = "http://127.0.0.1:9090"
  }
}

# Defaults for policies that set no timing of their own; the comfyui group's policy sets both
# (its local variant: comfy_service/nomad_local.py, LOCAL_AUTOSCALING).
policy {
  default_evaluation_interval = "2s"
  default_cooldown            = "30s"
}
