output "coordinator_function_name" {
  description = "The fleet's coordinator Lambda, for `aws lambda invoke` (name the cluster in the payload)."
  value       = module.fleet.coordinator_function_name
}

output "table_name" {
  description = "The shared DynamoDB state table."
  value       = module.fleet.table_name
}

output "events_topic_arn" {
  description = "SNS topic of every cluster's failover events."
  value       = module.fleet.events_topic_arn
}

output "writer_endpoints" {
  description = "Per cluster: point read-write clients here (host:port)."
  value       = { for c, m in module.cluster : c => m.writer_endpoint }
}

output "reader_endpoints" {
  description = "Per cluster: point read-only clients here (host:port)."
  value       = { for c, m in module.cluster : c => m.reader_endpoint }
}

output "admin_password_parameters" {
  description = "Per cluster: SSM parameter name of the administrator role's password."
  value       = { for c, m in module.cluster : c => m.admin_password_parameter }
}

output "archive_destinations" {
  description = "Per cluster: barman-cloud's destination URL, s3://<bucket>/<prefix> (null with backups off)."
  value       = { for c, m in module.cluster : c => m.archive_destination }
}
