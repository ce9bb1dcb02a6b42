"""Every external name in one place: Redis keys, queue names, metric names, header names."""

from __future__ import annotations

KEY_PREFIX = "cs:"
TASK_KEY = KEY_PREFIX + "task:{task_id}"            # JSON task record
TASK_EVENTS_KEY = KEY_PREFIX + "events:{task_id}"   # STREAM of a task's events (task_events.py)
BATCH_KEY = KEY_PREFIX + "batch:{batch_id}"          # JSON batch record (owner, task ids)
IDEMPOTENCY_KEY = KEY_PREFIX + "idem:{key_hash}"     # task id + request hash
READY_KEY = KEY_PREFIX + "ready"                     # ZSET of task ids waiting for a slot
SLOTS_KEY = KEY_PREFIX + "slots:{node}"              # HASH task id -> owning worker
LEASES_KEY = KEY_PREFIX + "leases"                   # ZSET task id -> lease expiry (ms)
BOUND_KEY = KEY_PREFIX + "bound"                     # HASH task id -> node holding its slot
ACCEPTED_KEY = KEY_PREFIX + "accepted"               # ZSET task id -> accepted at (ms), until admitted
NODES_KEY = KEY_PREFIX + "nodes"                     # HASH node -> JSON health/load snapshot
OBJECT_INFO_KEY = KEY_PREFIX + "object_info"         # HASH node -> JSON /object_info
RATE_KEY = KEY_PREFIX + "rate:{tenant}"             # HASH token bucket of an API key
ACTIVE_KEY = KEY_PREFIX + "active:{tenant}"         # ZSET an API key's tasks not yet final
UPLOAD_KEY = KEY_PREFIX + "upload:{upload_id}"       # JSON upload record (owner, type, size)
RETENTION_KEY = KEY_PREFIX + "retention"             # ZSET "task:<id>"/"upload:<id>" -> next check (ms)
WEBHOOKS_KEY = KEY_PREFIX + "webhooks"               # ZSET task id -> next webhook look (ms)
WEBHOOK_CURSORS_KEY = KEY_PREFIX + "webhook_cursors"  # HASH task id -> JSON delivery cursor
STORE_ID_KEY = KEY_PREFIX + "store_id"               # the local store's directory id (see storage)
WORKERS_KEY = KEY_PREFIX + "workers"                 # ZSET live worker id -> expiry (ms)
CANCEL_CHANNEL = KEY_PREFIX + "cancel"               # pub/sub: task ids to cancel
WAKE_CHANNEL = KEY_PREFIX + "wake"                   # pub/sub: new ready work

ADMIT_QUEUE = "comfy.admit"
REQUEST_ID_HEADER = "X-Request-ID"
IDEMPOTENCY_HEADER = "Idempotency-Key"

METRIC_PREFIX = "comfy_service_"

# Consul's own check ids for maintenance mode: a node in maintenance is draining, not failed.
SERVICE_MAINTENANCE_CHECK = "_service_maintenance:"  # + service id
NODE_MAINTENANCE_CHECK = "_node_maintenance"
