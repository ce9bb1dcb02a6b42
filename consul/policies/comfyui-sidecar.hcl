# ACL policy of the node sidecar (node_sidecar/): one per ComfyUI node, token in
# CONSUL_HTTP_TOKEN.
#
# The sidecar registers the `comfyui` service on its local agent with two checks (HTTP on
# ComfyUI's /queue, and a TTL it keeps passing), re-registers it when its Meta changes, updates
# the TTL check, puts the service in maintenance while draining, and deregisters on SIGTERM.
# All of that is authorised by service:write on the service: checks that carry a ServiceID need
# no node:write, and the agent's catalog sync of the service needs no node rule either (the
# agent's own token keeps its node entry). tests/test_consul_acl.py proves this policy is
# enough on a real agent with default deny.

# Only this name: a leaked sidecar token cannot announce any other service (not even
# `comfyui-<suffix>`: `service` is an exact match, unlike `service_prefix`).
service "comfyui" {
  policy = "write"
}

# An operator's cordon or drain (POST /api/v1/nodes/{id}/cordon|drain on the gateway) is a KV
# entry under comfy-service/nodes/<service id>; the sidecar reads it and applies it as service
# maintenance (comfy_service/availability.py). Read only: the gateway writes it.
key_prefix "comfy-service/nodes/" {
  policy = "read"
}

# Nothing else: no node or service_prefix rules.
