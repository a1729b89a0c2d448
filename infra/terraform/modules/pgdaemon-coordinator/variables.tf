# Internal module: the state table and the coordinator Lambda, shared by pgdaemon-cluster (one
# coordinator per cluster, fleet_mode = false) and pgdaemon-fleet (one coordinator for many
# clusters, fleet_mode = true). Its callers validate the user's input; this module takes it as
# given. Not meant to be used on its own.

variable "name" {
  description = "Resource name prefix: pgdaemon-<cluster> or pgdaemon-<fleet>."
  type        = string
}

variable "subject" {
  description = "What the coordinator serves, for descriptions: \"cluster <name>\" or \"fleet <name>\"."
  type        = string
}

variable "alarm_subject" {
  description = "Name substituted for $${cluster_name} in the function alarms' descriptions (the cluster's or the fleet's name)."
  type        = string
}

variable "fleet_mode" {
  description = "true: one coordinator for every registered cluster (whole-table access, the fleet index, self-invocation for shards, fencing of any tagged instance). false: one cluster's coordinator, confined to its items and instances."
  type        = bool
}

variable "clusters" {
  description = "PGDAEMON_CLUSTERS: clusters always evaluated. Per-cluster mode: exactly the cluster. Fleet mode: in addition to the registered ones (may be empty)."
  type        = list(string)
}

variable "clusters_per_invocation" {
  description = "Fleet mode: PGDAEMON_CLUSTERS_PER_INVOCATION."
  type        = number
  default     = 250
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions of the function (1 per cluster; the fleet's shards need more)."
  type        = number
}

variable "table_name" {
  type = string
}

variable "cluster_tag_key" {
  type = string
}

variable "fencing" {
  type = list(string)
}

variable "api_token_parameter" {
  description = "PGDAEMON_API_TOKEN_PARAMETER (fleet mode: may hold {cluster})."
  type        = string
}

variable "api_token_parameter_arn" {
  description = "The IAM resource of that parameter (fleet mode: {cluster} replaced by *)."
  type        = string
}

variable "api_token_secret_arns" {
  description = "Secrets Manager secrets behind the token parameter (a /aws/reference/secretsmanager/ reference), for secretsmanager:GetSecretValue; empty for the operator's own SecureString."
  type        = list(string)
}

variable "vpc_id" {
  type = string
}

variable "subnet_ids" {
  type = list(string)
}

variable "lambda_zip_path" {
  type = string
}

variable "lambda_architecture" {
  type = string
}

variable "timeout_seconds" {
  type = number
}

variable "memory_mb" {
  type = number
}

variable "schedule_expression" {
  type = string
}

variable "log_retention_days" {
  type = number
}

variable "kms_key_arn" {
  type = string
}

variable "deletion_protection" {
  type = bool
}

variable "alarm_topic_arn" {
  type = string
}

variable "tags" {
  type = map(string)
}
