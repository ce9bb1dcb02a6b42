# Monitoring of comfy-service: Prometheus (scrapes the gateway, the workers and the node
# sidecars it finds in Consul; evaluates monitoring/rules/) and Alertmanager (routes the alerts),
# both registered in Consul. Runbooks: docs/operations.md.
#
#   nomad var put nomad/jobs/monitoring consul_token=<token of consul/policies/prometheus.hcl>
#   nomad job run -var 'webhook_url=https://alerts.example/hook' nomad/monitoring.nomad.hcl   # from the repository root
#
# The configuration files are monitoring/*.yml of this repository, read by `nomad job run` at
# submit time (HCL file(); run it from the repository root or set monitoring_dir) and carried in
# the job itself: a config change is a new job version that `nomad job plan` shows and `nomad job
# revert` undoes, with no artifact server or host volume to keep in step. Template blocks write
# them into the task; their delimiters are [[ ]] so the {{ }} of alert templates pass through.
# A change reloads Prometheus and Alertmanager with SIGHUP (no restart, no lost alert state).
# Not part of `MESH=nomad make up`: it has no local variant.

variable "datacenters" {
  description = "Datacenters to run in."
  type        = list(string)
  default     = ["dc1"]
}

variable "images" {
  description = "Prometheus and Alertmanager images, pinned (Apache-2.0)."
  type        = object({ prometheus = string, alertmanager = string })
  default = {
    prometheus   = "prom/prometheus:v3.5.0"
    alertmanager = "prom/alertmanager:v0.28.1"
  }
}

variable "monitoring_dir" {
  description = "Directory holding prometheus.yml, rules/*.yml and alertmanager.yml, relative to where `nomad job run` runs."
  type        = string
  default     = "monitoring"
}

variable "prometheus" {
  description = "Prometheus port, metric retention, the URL people reach it at (links in alerts; empty: its address), resources."
  type = object({
    port         = number
    retention    = string
    external_url = string
    cpu          = number
    memory       = number
  })
  default = {
    port         = 9090
    retention    = "30d"
    external_url = ""
    cpu          = 1000
    memory       = 2048
  }
}

variable "alertmanager" {
  description = "Alertmanager port, the URL people reach it at (empty: its address), resources."
  type = object({
    port         = number
    external_url = string
    cpu          = number
    memory       = number
  })
  default = {
    port         = 9093
    external_url = ""
    cpu          = 200
    memory       = 256
  }
}

variable "data_volume" {
  description = "Host volume (client config `host_volume`) for Prometheus's TSDB, writable by uid 65534 (the image's user)."
  type        = string
  default     = "prometheus-data"
}

variable "consul_http_addr" {
  description = "Consul agent Prometheus discovers through; empty: the agent on the machine's address, port 8500 (as the other jobs)."
  type        = string
  default     = ""
}

variable "webhook_url" {
  description = "URL every Alertmanager receiver posts to (monitoring/alertmanager.yml routes by severity)."
  type        = string
  default     = "http://127.0.0.1:9099/alerts"
}

variable "runbook_base_url" {
  description = "Where docs/operations.md is published; alerts link to its sections."
  type        = string
  default     = "https://comfy-service.example/docs/operations.md"
}

variable "nomad_var_path" {
  description = "Nomad Variables path with key consul_token (Prometheus's Consul token)."
  type        = string
  default     = "nomad/jobs/monitoring"
}

locals {
  # Placeholders of the files in monitoring/, as the tests and a plain Prometheus run use them.
  repo_consul      = "127.0.0.1:8500"
  repo_self        = "127.0.0.1:9090"
  repo_webhook     = "http://127.0.0.1:9099/alerts"
  repo_runbook     = "https://comfy-service.example/docs/operations.md"
  consul_addr      = var.consul_http_addr != "" ? var.consul_http_addr : "[[ env \"attr.unique.network.ip-address\" ]]:8500"
  prometheus_yml   = replace(replace(file("${var.monitoring_dir}/prometheus.yml"), local.repo_consul, local.consul_addr), local.repo_self, "[[ env \"NOMAD_ADDR_prometheus\" ]]")
  alertmanager_yml = replace(file("${var.monitoring_dir}/alertmanager.yml"), local.repo_webhook, var.webhook_url)
  rule_files       = fileset(var.monitoring_dir, "rules/*.yml")
}

job "monitoring" {
  datacenters = var.datacenters
  type        = "service"

  group "monitoring" {
    count = 1

    network {
      port "prometheus" {
        static = var.prometheus.port
      }
      port "alertmanager" {
        static = var.alertmanager.port
      }
    }

    update {
      max_parallel     = 1
      health_check     = "checks"
      min_healthy_time = "10s"
      healthy_deadline = "5m"
      auto_revert      = true
    }

    service {
      name = "prometheus"
      port = "prometheus"
      tags = ["monitoring"]

      check {
        name     = "prometheus ready"
        type     = "http"
        path     = "/-/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    # Prometheus finds Alertmanager here (prometheus.yml alerting.consul_sd_configs).
    service {
      name = "alertmanager"
      port = "alertmanager"
      tags = ["monitoring"]

      check {
        name     = "alertmanager ready"
        type     = "http"
        path     = "/-/ready"
        interval = "10s"
        timeout  = "2s"
      }
    }

    restart {
      attempts = 5
      interval = "5m"
      delay    = "5s"
      mode     = "delay"
    }

    # Alertmanager's silences and notification log survive updates and restarts here.
    ephemeral_disk {
      size    = 300
      sticky  = true
      migrate = true
    }

    volume "data" {
      type   = "host"
      source = var.data_volume
    }

    task "prometheus" {
      driver       = "docker"
      kill_timeout = "60s"

      config {
        image        = var.images.prometheus
        network_mode = "host"
        ports        = ["prometheus"]
        args = [
          "--config.file=/local/prometheus.yml",
          "--storage.tsdb.path=/prometheus",
          "--storage.tsdb.retention.time=${var.prometheus.retention}",
          "--web.listen-address=$${NOMAD_ADDR_prometheus}",
          "--web.external-url=${var.prometheus.external_url != "" ? var.prometheus.external_url : "http://$${NOMAD_ADDR_prometheus}"}",
        ]
      }

      template {
        destination     = "local/prometheus.yml"
        data            = local.prometheus_yml
        left_delimiter  = "[["
        right_delimiter = "]]"
        change_mode     = "signal"
        change_signal   = "SIGHUP"
      }

      dynamic "template" {
        for_each = local.rule_files
        content {
          destination     = "local/${template.value}"
          data            = replace(file("${var.monitoring_dir}/${template.value}"), local.repo_runbook, var.runbook_base_url)
          left_delimiter  = "[["
          right_delimiter = "]]"
          change_mode     = "signal"
          change_signal   = "SIGHUP"
        }
      }

      # prometheus.yml reads the token from here on every Consul request: no reload on rotation.
      template {
        destination = "${NOMAD_SECRETS_DIR}/consul-token"
        change_mode = "noop"
        perms       = "0444"
        data        = <<-EOT
          {{ with nomadVar "${var.nomad_var_path}" }}{{ .consul_token }}{{ end }}
        EOT
      }

      volume_mount {
        volume      = "data"
        destination = "/prometheus"
      }

      resources {
        cpu    = var.prometheus.cpu
        memory = var.prometheus.memory
      }
    }

    task "alertmanager" {
      driver       = "docker"
      kill_timeout = "20s"

      config {
        image        = var.images.alertmanager
        network_mode = "host"
        ports        = ["alertmanager"]
        args = [
          "--config.file=/local/alertmanager.yml",
          "--storage.path=/alloc/data/alertmanager",
          "--web.listen-address=$${NOMAD_ADDR_alertmanager}",
          "--web.external-url=${var.alertmanager.external_url != "" ? var.alertmanager.external_url : "http://$${NOMAD_ADDR_alertmanager}"}",
          # One instance: no gossip cluster to form.
          "--cluster.listen-address=",
        ]
      }

      template {
        destination     = "local/alertmanager.yml"
        data            = local.alertmanager_yml
        left_delimiter  = "[["
        right_delimiter = "]]"
        change_mode     = "signal"
        change_signal   = "SIGHUP"
      }

      resources {
        cpu    = var.alertmanager.cpu
        memory = var.alertmanager.memory
      }
    }
  }
}
