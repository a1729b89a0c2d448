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

output "admin_user" {
  description = "Administrator role the first primary creates: psql as it on the writer endpoint."
  value       = module.cluster.admin_user
}

output "admin_password_parameter" {
  description = "SSM parameter name of that role's password (aws ssm get-parameter --with-decryption)."
  value       = module.cluster.admin_password_parameter
}

output "replication_password_parameter" {
  description = "SSM parameter name the agents read the replication password from (generated at deploy time)."
  value       = module.cluster.replication_password_parameter
}

output "api_token_parameter" {
  description = "SSM parameter name of the agents' API token (generated at deploy time)."
  value       = module.cluster.api_token_parameter
}

output "agent_object" {
  description = "The agent binary in the cluster's bucket and the sha256 the nodes check."
  value       = module.cluster.agent_object
}

output "backup_bucket" {
  description = "S3 bucket of the WAL archive and base backups (null with backups off)."
  value       = module.cluster.backup_bucket
}

output "archive_destination" {
  description = "barman-cloud's destination URL, s3://<bucket>/<prefix> (the cluster's backups are under <destination>/<cluster_name>/); null with backups off."
  value       = module.cluster.archive_destination
}
