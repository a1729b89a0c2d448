output "writer_endpoint" {
  description = "Point read-write clients here (host:port)."
  value       = module.cluster.writer_endpoint
}

output "reader_endpoint" {
  description = "Point read-only clients here (host:port)."
  value       = module.cluster.reader_endpoint
}

output "coordinator_function_name" {
  description = "Coordinator Lambda name, for `aws lambda invoke`."
  value       = module.cluster.coordinator_function_name
}

output "table_name" {
  description = "DynamoDB state table."
  value       = module.cluster.table_name
}

output "events_topic_arn" {
  description = "SNS topic of failover events."
  value       = module.cluster.events_topic_arn
}

output "autoscaling_group_name" {
  description = "Auto Scaling group of the nodes."
  value       = module.cluster.autoscaling_group_name
}

output "replication_password_parameter" {
  description = "SSM SecureString to create before the nodes boot: the replication password."
  value       = module.cluster.replication_password_parameter
}

output "api_token_parameter" {
  description = "SSM SecureString to create before the nodes boot: the agents' API token."
  value       = module.cluster.api_token_parameter
}
