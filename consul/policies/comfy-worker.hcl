# ACL policy of the workers (actors/): they follow the `comfyui` nodes with blocking
# queries on /v1/health/service/comfyui (actors/discovery.py). Token in
# CONSUL_HTTP_TOKEN.
#
# Consul filters a health answer by both service:read and node:read: without the node rule
# the answer is an empty list, not an error, and the workers would see no nodes at all.

service "comfyui" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}
