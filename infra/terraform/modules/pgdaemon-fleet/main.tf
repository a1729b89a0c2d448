data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

# The coordinator's subnets: its http fencing comes from these, so each cluster of the fleet adds
# them to its agents' API allow-list (the fleet output carries them).
data "aws_subnet" "coordinator" {
  for_each = toset(var.subnet_ids)
  id       = each.value
}

locals {
  name       = "pgdaemon-${var.name}"
  table_name = coalesce(var.table_name, local.name)
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id

  # No cluster tag here: the fleet belongs to no one cluster (and only instances carry it).
  tags = merge(var.tags, { "pgdaemon:component" = "fleet" })

  # Every cluster's API token, by the naming pattern: {cluster} becomes a wildcard in the IAM
  # resource, which a cluster name (no '/') fills in and nothing outside the pattern matches.
  token_pattern = replace(var.api_token_parameter, "{cluster}", "*")
  secret_ref    = "/aws/reference/secretsmanager/"
  # A reference to Secrets Manager also needs GetSecretValue on the secrets (name + the random
  # six-character suffix Secrets Manager appends to the ARN).
  token_secret_arns = startswith(var.api_token_parameter, local.secret_ref) ? [
    "arn:${local.partition}:secretsmanager:${local.region}:${local.account_id}:secret:${trimprefix(local.token_pattern, local.secret_ref)}-??????"
  ] : []
}

module "coordinator" {
  source = "../pgdaemon-coordinator"

  name                    = local.name
  subject                 = "fleet ${var.name}"
  alarm_subject           = "fleet ${var.name}"
  fleet_mode              = true
  clusters                = var.clusters
  clusters_per_invocation = var.clusters_per_invocation
  reserved_concurrency    = var.reserved_concurrency
  table_name              = local.table_name
  cluster_tag_key         = var.cluster_tag_key
  fencing                 = var.fencing
  api_token_parameter     = var.api_token_parameter
  api_token_parameter_arn = "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter${local.token_pattern}"
  api_token_secret_arns   = local.token_secret_arns
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

# The fleet's view: the coordinator Lambda, and every cluster's primary, failover and run
# metrics side by side (a search over the pgdaemon namespace, so clusters that join later appear
# by themselves). Each cluster also has its own dashboard (the cluster module's).
resource "aws_cloudwatch_dashboard" "this" {
  dashboard_name = local.name
  dashboard_body = templatefile("${path.module}/../pgdaemon-cluster/templates/fleet-dashboard.json", {
    region        = local.region
    function_name = module.coordinator.function_name
  })
}
