# ACL policy for node administration by the gateway (gateway/node_admin.py): an operator's
# POST /api/v1/nodes/{id}/cordon|drain|uncordon writes or deletes the KV entry
# comfy-service/nodes/<service id>; the node's sidecar reads it and applies it as service
# maintenance (comfy_service/availability.py). Nothing else is written.
#
# The comfy-service job gives its gateway and workers one token (Nomad Variable consul_token):
# give that token this policy and comfy-worker's. tests/test_consul_acl.py proves what it
# allows and refuses on a real agent with default deny.

key_prefix "comfy-service/nodes/" {
  policy = "write"
}
