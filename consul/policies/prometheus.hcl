# ACL policy of Prometheus (monitoring/prometheus.yml): consul_sd_configs lists the catalog
# services and reads each service's instances, with their Meta (the sidecars' metrics_port and
# gpu_uuid). Read-only, like the workers'; it needs every service it scrapes (the catalog list
# is filtered by service:read too) and the nodes' addresses (node:read).

service "comfyui" {
  policy = "read"
}

service "comfy-gateway" {
  policy = "read"
}

service "comfy-worker" {
  policy = "read"
}

service "alertmanager" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}
