# Cluster scaling example: the GPU machines themselves, an AWS Auto Scaling group of Nomad clients
# with node_class "gpu", sized on the same backlog signal as the comfyui group
# (nomad/comfyui.nomad.hcl). The group asks for allocations; one that finds no free GPU stays
# pending, its node never turns healthy, the demand per healthy slot stays high and this policy
# adds a machine. Idle, the signal is 0: both come down to their min, machines drained first.
#
# Loaded by the autoscaler's file policy source (`policy { dir = "<this directory>" }`) beside
# an agent config that declares the target plugin, e.g.
#
#   target "aws-asg" {
#     driver = "aws-asg"
#     config = {
#       aws_region = "eu-west-1"  # credentials: the instance profile, never this file
#     }
#   }
#
# tests/test_autoscaler.py checks that the autoscaler parses this file (without that target
# declared, so nothing is sent to AWS).

scaling "cluster-gpu" {
  enabled = true
  type    = "cluster"
  min     = 1
  max     = 16

  policy {
    evaluation_interval = "1m"
    # A cloud GPU machine takes minutes to boot, join Nomad, pull the node image and load models;
    # until it takes work the backlog looks as high as before.
    cooldown = "10m"

    check "backlog" {
      source = "prometheus"
      # Demand per node slot, as the comfyui group's check (nomad/comfyui.nomad.hcl).
      query = <<-EOT
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

      strategy "target-value" {
        target = 1
      }
    }

    target "aws-asg" {
      aws_asg_name = "comfyui-gpu"
      node_class   = "gpu"
      # Only machines with no allocation but system jobs are removed: the comfyui group scales
      # in first (same signal, shorter cooldown), and removing a busy machine would only move
      # its allocation to a pending state and bring the backlog, and the machine, back.
      node_selector_strategy = "empty_ignore_system"
      # Scale-in drains the machine before terminating it; should an allocation have landed in
      # the meantime, it stops through the sidecar's drain (drain_timeout 600 s plus the kill
      # margin), so no prompt is cut off.
      node_drain_deadline           = "15m"
      node_drain_ignore_system_jobs = "false"
      node_purge                    = "true"
    }
  }
}
