# Redis for comfy-service: the Dramatiq broker and the task records, with an append-only file
# on a host volume so a restart loses nothing accepted. Registered in Consul as `redis`, where
# nomad/comfy-service.nomad.hcl finds it (or set that job's redis_url to an external Redis).
#
#   nomad job run nomad/redis.nomad.hcl

variable "datacenters" {
  description = "Datacenters to run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "image" {
  description = "Redis image (BSD-3-Clause Redis 7.2; later versions changed licence)."
  type        = string
  default     = "redis:7.2.5-alpine"
}

variable "data_volume" {
  description = "Host volume (client config `host_volume`) for the append-only file."
  type        = string
  default     = "comfy-redis"
}

variable "port" {
  description = "Port Redis listens on."
  type        = number
  default     = 6379
}

variable "resources" {
  description = "CPU (MHz) and memory (MiB) for Redis; task records are small, outputs are not stored here."
  type        = object({ cpu = number, memory = number })
  default     = { cpu = 500, memory = 1024 }
}

job "redis" {
  datacenters = var.datacenters
  type        = "service"

  group "redis" {
    count = 1

    network {
      port "redis" {
        static = var.port
      }
    }

    service {
      name = "redis"
      port = "redis"

      check {
        name     = "redis answers"
        type     = "tcp"
        interval = "5s"
        timeout  = "2s"
      }
    }

    restart {
      attempts = 10
      interval = "5m"
      delay    = "2s"
      mode     = "delay"
    }

    volume "data" {
      type   = "host"
      source = var.data_volume
    }

    task "redis" {
      driver       = "docker"
      kill_timeout = "30s"

      config {
        image        = var.image
        network_mode = "host"
        args = [
          "redis-server", "--port", "${NOMAD_PORT_redis}", "--bind", "${NOMAD_IP_redis}",
          "--dir", "/data", "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        ]
      }

      volume_mount {
        volume      = "data"
        destination = "/data"
      }

      resources {
        cpu    = var.resources.cpu
        memory = var.resources.memory
      }
    }
  }
}
