# The service: the gateway (REST API v1) and the workers that dispatch tasks to the ComfyUI
# nodes they find in Consul.
#
#   nomad var put nomad/jobs/comfy-service api_keys=key1,key2 admin_api_keys=<operators' key> \
#     webhook_secret=<random, signs webhook deliveries> \
#     consul_token=<token with the comfy-worker and comfy-gateway policies> \
#     s3_access_key=<key id> s3_secret_key=<secret>      # with store.kind = "s3"
#   nomad job run -var 'image=registry.example.com/comfy-service:0.1.0' nomad/comfy-service.nomad.hcl
#
# Secrets (API keys, the Consul token, S3 credentials) come from Nomad Variables through template blocks and
# are never written here. `MESH=nomad make up` derives its local variant from this file
# (comfy_service/nomad_local.py): raw_exec with the project's virtualenv instead of the image.

variable "datacenters" {
  description = "Datacenters to run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "image" {
  description = "The service image (the repository's Dockerfile)."
  type        = string
  default     = "ghcr.io/comfy-service/comfy-service:0.1.0"
}

variable "redis_url" {
  description = "Redis for the broker and task records; empty: the `redis` service in Consul (nomad/redis.nomad.hcl)."
  type        = string
  default     = ""
}

variable "gateway" {
  description = "Gateway instances (on distinct machines), the port each listens on, resources."
  type = object({
    count   = number
    port    = number
    workers = number
    cpu     = number
    memory  = number
  })
  default = {
    count   = 2
    port    = 8080
    workers = 2
    cpu     = 1000
    memory  = 512
  }
}

variable "worker" {
  description = "Worker processes, the prompts each node holds at once (slots), resources."
  type = object({
    count      = number
    node_slots = number
    cpu        = number
    memory     = number
  })
  default = {
    count      = 2
    node_slots = 2
    cpu        = 1000
    memory     = 1024
  }
}

variable "consul_service" {
  description = "Consul service name of the ComfyUI nodes (nomad/comfyui.nomad.hcl registers them)."
  type        = string
  default     = "comfyui"
}

variable "store" {
  description = "Where outputs and uploaded inputs live: kind \"s3\" (any S3-compatible bucket; recommended across machines) or \"local\" (outputs_volume, which must then be one shared filesystem). presign_ttl_s > 0: downloads redirect to presigned URLs."
  type = object({
    kind          = string
    bucket        = string
    prefix        = string
    endpoint      = string
    region        = string
    presign_ttl_s = number
  })
  default = {
    kind          = "local"
    bucket        = ""
    prefix        = "comfy-service"
    endpoint      = ""
    region        = "us-east-1"
    presign_ttl_s = 0
  }

  validation {
    condition     = contains(["local", "s3"], var.store.kind) && (var.store.kind == "local" || var.store.bucket != "")
    error_message = "The store kind must be local or s3, and s3 needs a bucket."
  }
}

variable "outputs_volume" {
  description = "Host volume for output files with store.kind = \"local\": one filesystem shared by gateways and workers (a process on another filesystem refuses to start)."
  type        = string
  default     = "comfy-outputs"
}

variable "nomad_var_path" {
  description = "Nomad Variables path with keys api_keys, admin_api_keys, consul_token (and S3 keys)."
  type        = string
  default     = "nomad/jobs/comfy-service"
}

variable "log_level" {
  description = "Log level of every process (INFO, DEBUG, ...)."
  type        = string
  default     = "INFO"
}

locals {
  # Settings every process reads (comfy_service/settings.py); secrets come from the template.
  common_env = {
    DISCOVERY           = "consul"
    CONSUL_HTTP_ADDR    = "$${attr.unique.network.ip-address}:8500"
    CONSUL_SERVICE_NAME = var.consul_service
    NODE_SLOTS          = var.worker.node_slots
    OUTPUT_DIR          = "/data/outputs"
    OUTPUT_STORE        = var.store.kind
    S3_BUCKET           = var.store.bucket
    S3_PREFIX           = var.store.prefix
    S3_ENDPOINT         = var.store.endpoint
    S3_REGION           = var.store.region
    PRESIGN_TTL_S       = var.store.presign_ttl_s
    LOG_LEVEL           = var.log_level
  }
  # REDIS_URL from the variable, else from the `redis` service Consul knows.
  secrets = <<-EOT
    {{ with nomadVar "${var.nomad_var_path}" }}{{ with .api_keys }}API_KEYS={{ . }}{{ end }}
    {{ with .admin_api_keys }}ADMIN_API_KEYS={{ . }}{{ end }}
    {{ with .webhook_secret }}WEBHOOK_SECRET={{ . }}{{ end }}
    {{ with .consul_token }}CONSUL_HTTP_TOKEN={{ . }}{{ end }}
    {{ with .s3_access_key }}AWS_ACCESS_KEY_ID={{ . }}{{ end }}
    {{ with .s3_secret_key }}AWS_SECRET_ACCESS_KEY={{ . }}{{ end }}{{ end }}
    %{if var.redis_url != ""}REDIS_URL=${var.redis_url}%{else}{{ range service "redis" }}REDIS_URL=redis://{{ .Address }}:{{ .Port }}/0{{ end }}%{endif}
  EOT
}

job "comfy-service" {
  datacenters = var.datacenters
  type        = "service"

  group "gateway" {
    count = var.gateway.count

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      port "http" {
        static = var.gateway.port
      }
    }

    # A new version starts as one canary; it is promoted when healthy, reverted when not.
    update {
      max_parallel     = 1
      canary           = 1
      auto_promote     = true
      auto_revert      = true
      health_check     = "checks"
      min_healthy_time = "5s"
      healthy_deadline = "2m"
    }

    service {
      name = "comfy-gateway"
      port = "http"
      tags = ["api", "v1"]

      check {
        name     = "gateway ready"
        type     = "http"
        path     = "/readyz"
        interval = "5s"
        timeout  = "2s"
      }
    }

    restart {
      attempts = 5
      interval = "2m"
      delay    = "2s"
      mode     = "delay"
    }

    volume "outputs" {
      type   = "host"
      source = var.outputs_volume
    }

    task "gateway" {
      driver       = "docker"
      kill_timeout = "20s"

      config {
        image        = var.image
        network_mode = "host"
        args         = ["gateway"]
        ports        = ["http"]
      }

      env = merge(local.common_env, {
        API_HOST    = "$${NOMAD_IP_http}"
        API_PORT    = "$${NOMAD_PORT_http}"
        API_WORKERS = var.gateway.workers
      })

      template {
        destination = "${NOMAD_SECRETS_DIR}/service.env"
        env         = true
        change_mode = "restart"
        data        = local.secrets
      }

      volume_mount {
        volume      = "outputs"
        destination = "/data/outputs"
      }

      resources {
        cpu    = var.gateway.cpu
        memory = var.gateway.memory
      }
    }
  }

  group "worker" {
    count = var.worker.count

    # Each worker process is scraped on its own port, found by Prometheus through Consul
    # (monitoring/prometheus.yml): workers are independent processes, Prometheus sums them.
    network {
      port "metrics" {}
    }

    service {
      name = "comfy-worker"
      port = "metrics"
      tags = ["metrics"]

      check {
        name     = "worker metrics"
        type     = "http"
        path     = "/metrics"
        interval = "10s"
        timeout  = "2s"
      }
    }

    # Workers hand their tasks to another worker on SIGTERM; a crash is covered by leases.
    restart {
      attempts = 10
      interval = "5m"
      delay    = "2s"
      mode     = "delay"
    }

    volume "outputs" {
      type   = "host"
      source = var.outputs_volume
    }

    task "worker" {
      driver       = "docker"
      kill_timeout = "30s"

      config {
        image        = var.image
        network_mode = "host"
        args         = ["worker"]
        ports        = ["metrics"]
      }

      env = merge(local.common_env, {
        API_HOST            = "$${NOMAD_IP_metrics}"
        WORKER_METRICS_PORT = "$${NOMAD_PORT_metrics}"
      })

      template {
        destination = "${NOMAD_SECRETS_DIR}/service.env"
        env         = true
        change_mode = "restart"
        data        = local.secrets
      }

      volume_mount {
        volume      = "outputs"
        destination = "/data/outputs"
      }

      resources {
        cpu    = var.worker.cpu
        memory = var.worker.memory
      }
    }
  }
}
