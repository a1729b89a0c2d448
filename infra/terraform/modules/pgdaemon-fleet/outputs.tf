output "fleet" {
  description = "Give this to each cluster of the fleet: module \"<cluster>\" { source = \".../pgdaemon-cluster\" ... fleet = module.<this>.fleet }."
  value = {
    table_name                    = module.coordinator.table_name
    table_arn                     = module.coordinator.table_arn
    coordinator_function_name     = module.coordinator.function_name
    coordinator_function_arn      = module.coordinator.function_arn
    coordinator_security_group_id = module.coordinator.security_group_id
    coordinator_subnet_cidrs      = [for id in var.subnet_ids : data.aws_subnet.coordinator[id].cidr_block]
    vpc_id                        = var.vpc_id
    api_token_parameter           = var.api_token_parameter
    events_topic_arn              = module.coordinator.events_topic_arn
  }
}

output "table_name" {
  description = "The shared DynamoDB state table (PGDAEMON_TABLE of the coordinator, store.table of every cluster's agents)."
  value       = module.coordinator.table_name
}

output "table_arn" {
  description = "ARN of the shared state table."
  value       = module.coordinator.table_arn
}

output "coordinator_function_name" {
  description = "The fleet's coordinator Lambda; invoke it for status, failover or switchover of any of its clusters (see infra/README.md)."
  value       = module.coordinator.function_name
}

output "coordinator_function_arn" {
  description = "ARN of the fleet's coordinator Lambda."
  value       = module.coordinator.function_arn
}

output "coordinator_agent_alias_arn" {
  description = "Qualified ARN of the coordinator's agent-evaluate alias, which every cluster's nodes may invoke (evaluate only)."
  value       = module.coordinator.agent_alias_arn
}

output "coordinator_role_arn" {
  description = "Execution role of the fleet's coordinator."
  value       = module.coordinator.role_arn
}

output "coordinator_security_group_id" {
  description = "Security group of the fleet's coordinator; each cluster lets it reach its agents' API."
  value       = module.coordinator.security_group_id
}

output "events_topic_arn" {
  description = "SNS topic of failover events of every cluster of the fleet."
  value       = module.coordinator.events_topic_arn
}

output "schedule_rule_name" {
  description = "EventBridge rule that runs the fleet's coordinator."
  value       = module.coordinator.schedule_rule_name
}

output "alarm_names" {
  description = "The coordinator function's CloudWatch alarms, by id (the per-cluster ones are the cluster modules')."
  value       = module.coordinator.alarm_names
}

output "dashboard_name" {
  description = "The fleet's CloudWatch dashboard."
  value       = aws_cloudwatch_dashboard.this.dashboard_name
}
