# ComfyUI GPU nodes: one allocation per GPU, each running `instances_per_gpu` ComfyUI processes
# (one task, the node image's entrypoint starts them) and one sidecar that registers each of
# them in Consul as its own `comfyui` service with the GPU's load in Meta.
#
#   nomad job run -var 'node_image=registry.example.com/comfyui-node:0.3.64' nomad/comfyui.nomad.hcl
#
# Stopping an allocation (scale-in, `nomad alloc stop`, drain, job update) lets the prompts it
# holds finish: the sidecar is the group's leader, so Nomad signals it first and waits for it;
# it puts its services in Consul maintenance (workers bind nothing more there), waits until
# ComfyUI's queue is empty (bounded by drain_timeout), deregisters and exits; only then is
# ComfyUI stopped. `MESH=nomad make up` derives its local variant from this file
# (comfy_service/nomad_local.py): raw_exec, the simulator instead of the node image.

variable "datacenters" {
  description = "Datacenters the GPU clients are in."
  type        = list(string)
  default     = ["dc1"]
}

variable "node_image" {
  description = "The GPU node image (docker/comfyui.Dockerfile): ComfyUI, StoryDiffusion and the sidecar."
  type        = string
  default     = "ghcr.io/comfy-service/comfyui-node:0.3.64"
}

variable "nodes" {
  description = "GPU allocations to run (one GPU each); the scaling block bounds changes."
  type        = number
  default     = 2
}

variable "instances_per_gpu" {
  description = "ComfyUI processes packed on each GPU (+19 % throughput with 2 at SDXL 1024 px on an H100)."
  type        = number
  default     = 1
}

variable "scaling" {
  description = "Bounds for `nomad job scale` and the autoscaler."
  type        = object({ min = number, max = number })
  default     = { min = 1, max = 16 }
}

variable "autoscaling" {
  description = "The Nomad Autoscaler's policy for the group (docs/deploy.md, Autoscaling): how often it reads the backlog, how long it waits after a change, and the demand per node slot it aims for."
  type        = object({ evaluation_interval = string, cooldown = string, target = number })
  default = {
    evaluation_interval = "30s"
    # Longer than a new node takes to start and register: until it takes work, the backlog
    # still looks as high, and a second decision would add nodes for the same demand.
    cooldown = "3m"
    target   = 1
  }
}

variable "comfyui" {
  description = "Per-allocation resources and dispatch settings of the ComfyUI task."
  type = object({
    cpu        = number
    memory     = number
    slots      = number
    models_dir = string
  })
  default = {
    cpu        = 4000
    memory     = 24576
    slots      = 2
    models_dir = "/models"
  }
}

variable "models_volume" {
  description = "Host volume (client config `host_volume`) holding the models, mounted read-only."
  type        = string
  default     = "comfyui-models"
}

variable "consul_service" {
  description = "Consul service name the sidecars register and the workers discover."
  type        = string
  default     = "comfyui"
}

variable "drain_timeout" {
  description = "How long a stopping allocation waits for its prompts to finish (seconds); kill_timeout adds a margin."
  type        = number
  default     = 600
}

variable "nomad_var_path" {
  description = "Nomad Variables path holding the sidecar's Consul token (key consul_token)."
  type        = string
  default     = "nomad/jobs/comfyui"
}

locals {
  instances = range(var.instances_per_gpu)
  # Every port label the allocation uses: ComfyUI instance i listens on comfyui<i>.
  comfyui_ports = [for i in local.instances : "comfyui${i}"]

  # Demand per node slot, the autoscaler's backlog signal: tasks waiting for a slot plus tasks
  # bound to a node, over the slots of the healthy nodes (used + free while healthy). Every
  # worker reads these from Redis and exports the same values, so duplicates collapse with max,
  # never sum. No worker metrics: no value, and the autoscaler does nothing. No healthy node:
  # the backlog itself (capacity clamped to 1), so the group still grows.
  backlog_per_slot = <<-EOT
    (
      max(comfy_service_tasks_waiting)
      + (sum(max by (node) (comfy_service_node_slots_used)) or vector(0))
    )
    / clamp_min(
      sum(max by (node) (
        comfy_service_node_healthy
        * (comfy_service_node_slots_used + comfy_service_node_slots_free)
      )) or vector(0),
      1
    )
  EOT
}

job "comfyui" {
  datacenters = var.datacenters
  type        = "service"

  group "gpu" {
    count = var.nodes

    network {
      dynamic "port" {
        for_each = local.comfyui_ports
        labels   = [port.value]
        content {}
      }
      port "sidecar" {}
    }

    # One node at a time, and only once the replacement's sidecar passes in Consul.
    update {
      max_parallel      = 1
      health_check      = "task_states"
      min_healthy_time  = "10s"
      healthy_deadline  = "10m"
      progress_deadline = "20m"
      auto_revert       = true
    }

    # Scale-in, `nomad job scale` and the autoscaler stay within these bounds.
    scaling {
      enabled = true
      min     = var.scaling.min
      max     = var.scaling.max

      # Read by the Nomad Autoscaler (nomad/autoscaler/). target-value sets the count to
      # ceil(count * signal / target): with the signal at demand per slot and count about the
      # healthy nodes, that is the nodes the backlog needs; idle, the signal is 0 and the
      # group goes back to min. Scale-in drains (the sidecar leads), so no prompt is cut off.
      policy {
        evaluation_interval = var.autoscaling.evaluation_interval
        cooldown            = var.autoscaling.cooldown

        check "backlog" {
          source = "prometheus"
          query  = local.backlog_per_slot

          strategy "target-value" {
            target = var.autoscaling.target
          }
        }
      }
    }

    # A crashed ComfyUI comes back on the same machine quickly (the workers fail its tasks over
    # the moment its checks fail); a node that keeps failing is rescheduled elsewhere.
    restart {
      attempts = 3
      interval = "5m"
      delay    = "2s"
      mode     = "fail"
    }

    reschedule {
      delay          = "10s"
      delay_function = "exponential"
      max_delay      = "5m"
      unlimited      = true
    }

    volume "models" {
      type      = "host"
      source    = var.models_volume
      read_only = true
    }

    task "comfyui" {
      driver       = "docker"
      kill_timeout = "30s"

      config {
        image        = var.node_image
        network_mode = "host"
        ports        = local.comfyui_ports
      }

      env {
        # The entrypoint starts one ComfyUI per port, all on the GPU Nomad assigned.
        LISTEN_ADDR   = "${NOMAD_IP_comfyui0}"
        COMFYUI_PORTS = join(",", [for p in local.comfyui_ports : "$${NOMAD_PORT_${p}}"])
        # The image's HEALTHCHECK probes the first instance.
        BASE_PORT  = "${NOMAD_PORT_comfyui0}"
        MODELS_DIR = var.comfyui.models_dir
        # The sidecar reads which GPU this is from here (it shares no device with this task).
        GPU_UUID_FILE = "${NOMAD_ALLOC_DIR}/gpu-uuid"
      }

      volume_mount {
        volume      = "models"
        destination = var.comfyui.models_dir
        read_only   = true
      }

      resources {
        cpu    = var.comfyui.cpu
        memory = var.comfyui.memory

        device "nvidia/gpu" {
          count = 1
        }
      }
    }

    task "sidecar" {
      driver = "docker"
      leader = true
      # The drain (see top of file) plus a margin to deregister.
      kill_timeout = "${var.drain_timeout + 15}s"

      lifecycle {
        hook    = "prestart"
        sidecar = true
      }

      config {
        image        = var.node_image
        network_mode = "host"
        entrypoint   = ["comfy-service"]
        args         = ["sidecar"]
        ports        = ["sidecar"]
        # NVML sees every GPU; the sidecar picks the one named in GPU_UUID_FILE.
        runtime = "nvidia"
      }

      env {
        COMFYUI_URLS           = join(",", [for p in local.comfyui_ports : "http://$${NOMAD_ADDR_${p}}"])
        NODE_ADDRESS           = "${NOMAD_IP_comfyui0}"
        NODE_HOSTNAME          = "${node.unique.name}"
        NODE_SLOTS             = var.comfyui.slots
        CONSUL_SERVICE_NAME    = var.consul_service
        CONSUL_HTTP_ADDR       = "${attr.unique.network.ip-address}:8500"
        SIDECAR_HOST           = "${NOMAD_IP_sidecar}"
        SIDECAR_PORT           = "${NOMAD_PORT_sidecar}"
        DRAIN_TIMEOUT_S        = var.drain_timeout
        GPU_UUID_FILE          = "${NOMAD_ALLOC_DIR}/gpu-uuid"
        NVIDIA_VISIBLE_DEVICES = "all"
      }

      # The Consul token comes from Nomad Variables, never from this file.
      template {
        destination = "${NOMAD_SECRETS_DIR}/consul.env"
        env         = true
        change_mode = "restart"
        data        = <<-EOT
          {{ with nomadVar "${var.nomad_var_path}" }}{{ with .consul_token }}CONSUL_HTTP_TOKEN={{ . }}{{ end }}{{ end }}
        EOT
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }
}
