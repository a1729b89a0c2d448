output "table_name" {
  description = "DynamoDB state table (PGDAEMON_TABLE of the coordinator, store.table of the agents): the cluster's own, or the fleet's."
  value       = local.coordinator.table_name
}

output "table_arn" {
  description = "ARN of the DynamoDB state table."
  value       = local.coordinator.table_arn
}

output "coordinator_function_name" {
  description = "Coordinator Lambda (the cluster's own, or the fleet's); invoke it for status, failover or switchover (see infra/README.md)."
  value       = local.coordinator.function_name
}

output "coordinator_function_arn" {
  description = "ARN of the coordinator Lambda."
  value       = local.coordinator.function_arn
}

output "coordinator_agent_alias_arn" {
  description = "Qualified ARN of the coordinator's agent-evaluate alias: the only thing the nodes may invoke (evaluate only)."
  value       = local.coordinator.agent_alias_arn
}

output "coordinator_role_arn" {
  description = "Execution role of the cluster's coordinator Lambda (null in fleet mode: see the fleet module's outputs)."
  value       = local.fleet_mode ? null : module.coordinator[0].role_arn
}

output "agent_role_arn" {
  description = "Instance role of the Postgres nodes (agents)."
  value       = aws_iam_role.agent.arn
}

output "replication_password_parameter" {
  description = "SSM parameter name the agents read the replication password from (a generated secret's /aws/reference/secretsmanager/ path unless you gave your own)."
  value       = local.replication_password_parameter
}

output "rewind_password_parameter" {
  description = "SSM parameter name the agents read the pg_rewind role's password from."
  value       = local.rewind_password_parameter
}

output "api_token_parameter" {
  description = "SSM parameter name holding the agents' API bearer token, read by the agents and the coordinator."
  value       = local.api_token_parameter
}

output "admin_user" {
  description = "The administrator role the first primary creates (LOGIN, CREATEDB, CREATEROLE): connect as it to the writer endpoint."
  value       = local.admin_user
}

output "admin_password_parameter" {
  description = "SSM parameter name of the administrator role's password: aws ssm get-parameter --with-decryption --name <this> --query Parameter.Value --output text."
  value       = local.admin_password_parameter
}

output "generated_secret_arns" {
  description = "Secrets Manager secrets the module generated, by purpose (replication-password, rewind-password, api-token, admin-password)."
  value       = { for k, s in aws_secretsmanager_secret.generated : k => s.arn }
}

output "artifacts_bucket" {
  description = "S3 bucket holding the agent binary the nodes install (null without agent_binary_path)."
  value       = local.upload_agent ? aws_s3_bucket.artifacts[0].id : null
}

output "agent_object" {
  description = "The agent binary's S3 object and the sha256 every node checks before installing it (null without agent_binary_path)."
  value       = local.upload_agent ? { bucket = aws_s3_bucket.artifacts[0].id, key = local.agent_key, sha256 = local.agent_sha256 } : null
}

output "backup_bucket" {
  description = "S3 bucket of the cluster's WAL archive and base backups (the one created, or backups.bucket_name); null with backups off."
  value       = local.backups_enabled ? local.backup_bucket : null
}

output "archive_destination" {
  description = "The agents' [archive] destination, s3://<bucket>/<prefix>: barman-cloud keeps the cluster's backups under <destination>/<cluster_name>/ (e.g. barman-cloud-backup-list <destination> <cluster_name>); null with backups off."
  value       = local.backups_enabled ? local.archive_destination : null
}

output "events_topic_arn" {
  description = "SNS topic of failover events; subscribe your alerting to it (in fleet mode the fleet's, shared by its clusters, or null if var.fleet does not name it)."
  value       = local.coordinator.events_topic_arn
}

output "schedule_rule_name" {
  description = "EventBridge rule that runs the coordinator every minute (null in fleet mode: the fleet's)."
  value       = local.fleet_mode ? null : module.coordinator[0].schedule_rule_name
}

output "autoscaling_group_name" {
  description = "Auto Scaling group of the Postgres nodes."
  value       = aws_autoscaling_group.nodes.name
}

output "node_security_group_id" {
  description = "Security group of the Postgres nodes."
  value       = aws_security_group.nodes.id
}

output "nlb_dns_name" {
  description = "DNS name of the internal NLB."
  value       = aws_lb.this.dns_name
}

output "writer_endpoint" {
  description = "host:port clients use for reads and writes (always the current primary)."
  value       = "${aws_lb.this.dns_name}:${var.postgres_port}"
}

output "reader_endpoint" {
  description = "host:port balanced over the streaming replicas."
  value       = "${aws_lb.this.dns_name}:${var.reader_port}"
}

output "cluster_tag" {
  description = "The tag (key = value) that makes an instance fenceable by this cluster's coordinator."
  value       = { (var.cluster_tag_key) = var.cluster_name }
}

output "alarm_names" {
  description = "The CloudWatch alarms on the coordinator's metrics, by id (templates/alarms.json); in fleet mode the cluster's only (the function's are the fleet's)."
  value       = merge({ for k, a in aws_cloudwatch_metric_alarm.this : k => a.alarm_name }, local.fleet_mode ? {} : module.coordinator[0].alarm_names)
}

output "dashboard_name" {
  description = "The CloudWatch dashboard of the coordinator's metrics."
  value       = aws_cloudwatch_dashboard.this.dashboard_name
}
