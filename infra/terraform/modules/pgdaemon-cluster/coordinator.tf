# The cluster's coordinator and state table: its own (modules/pgdaemon-coordinator, one
# coordinator for this cluster: PGDAEMON_CLUSTERS = the cluster, PGDAEMON_DISCOVERY = off), or,
# with var.fleet, the fleet's (modules/pgdaemon-fleet), to which this module only adds nodes.

module "coordinator" {
  source = "../pgdaemon-coordinator"
  count  = local.fleet_mode ? 0 : 1

  name                    = local.name
  subject                 = "cluster ${var.cluster_name}"
  alarm_subject           = var.cluster_name
  fleet_mode              = false
  clusters                = [var.cluster_name]
  reserved_concurrency    = 1 # two runs never act on the cluster at once
  table_name              = local.table_name
  cluster_tag_key         = var.cluster_tag_key
  fencing                 = var.fencing
  api_token_parameter     = local.api_token_parameter
  api_token_parameter_arn = "${local.parameter_arn}${local.api_token_parameter}"
  api_token_secret_arns   = contains(keys(local.generated_secrets), "api-token") ? [aws_secretsmanager_secret.generated["api-token"].arn] : []
  vpc_id                  = var.vpc_id
  subnet_ids              = var.subnet_ids
  lambda_zip_path         = var.lambda_zip_path
  lambda_architecture     = var.lambda_architecture
  timeout_seconds         = var.coordinator_timeout_seconds
  memory_mb               = var.coordinator_memory_mb
  schedule_expression     = var.schedule_expression
  log_retention_days      = var.log_retention_days
  kms_key_arn             = var.kms_key_arn
  deletion_protection     = var.deletion_protection
  alarm_topic_arn         = var.alarm_topic_arn
  tags                    = local.tags
}

locals {
  # What the nodes, the alarms and the outputs use, whichever coordinator it is.
  coordinator = local.fleet_mode ? {
    table_name        = var.fleet.table_name
    table_arn         = var.fleet.table_arn
    function_name     = var.fleet.coordinator_function_name
    function_arn      = var.fleet.coordinator_function_arn
    agent_alias_name  = "agent-evaluate"
    agent_alias_arn   = "${var.fleet.coordinator_function_arn}:agent-evaluate"
    security_group_id = var.fleet.coordinator_security_group_id
    events_topic_arn  = var.fleet.events_topic_arn
    } : {
    table_name        = module.coordinator[0].table_name
    table_arn         = module.coordinator[0].table_arn
    function_name     = module.coordinator[0].function_name
    function_arn      = module.coordinator[0].function_arn
    agent_alias_name  = module.coordinator[0].agent_alias_name
    agent_alias_arn   = module.coordinator[0].agent_alias_arn
    security_group_id = module.coordinator[0].security_group_id
    events_topic_arn  = module.coordinator[0].events_topic_arn
  }
}

# The coordinator reaches this cluster's agents' API (http fencing); a fleet's coordinator gets
# one such rule from each cluster, towards that cluster's nodes only.
resource "aws_security_group_rule" "coordinator_to_agents" {
  description              = "Agent HTTP API on the cluster nodes (http fencing, demote)"
  type                     = "egress"
  security_group_id        = local.coordinator.security_group_id
  protocol                 = "tcp"
  from_port                = var.agent_api_port
  to_port                  = var.agent_api_port
  source_security_group_id = aws_security_group.nodes.id

  lifecycle {
    # The fleet's coordinator reads each cluster's token by its naming pattern, and reaches the
    # nodes by security group, which works only within one VPC.
    precondition {
      condition     = !local.fleet_mode || try(replace(var.fleet.api_token_parameter, "{cluster}", var.cluster_name) == local.api_token_parameter, false)
      error_message = "fleet mode: the cluster's API token parameter (${local.api_token_parameter}) is not where the fleet's coordinator reads it (its api_token_parameter with {cluster} = ${var.cluster_name}): set api_token_parameter accordingly, or leave both at their defaults."
    }
    precondition {
      condition     = !local.fleet_mode || try(var.fleet.vpc_id == null || var.fleet.vpc_id == var.vpc_id, true)
      error_message = "fleet mode: the cluster's nodes must be in the fleet coordinator's VPC (its http fencing reaches them by security group)."
    }
  }
}
