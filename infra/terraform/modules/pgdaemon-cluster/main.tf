data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  name       = "pgdaemon-${var.cluster_name}"
  table_name = coalesce(var.table_name, local.name)
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  account_id = data.aws_caller_identity.current.account_id

  # Every resource carries the cluster tag; on instances it is what the coordinator's IAM
  # conditions key on, so it must be exactly cluster_name.
  tags = merge(var.tags, {
    (var.cluster_tag_key) = var.cluster_name
    "pgdaemon:component"  = "cluster"
  })

  # ARN pattern of EC2 instances in this account and region; the tag condition narrows it to
  # the cluster's own instances.
  instance_arn_pattern = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"

  coordinator_function_name = "${local.name}-coordinator"

  # Load balancer and target group names are limited to 32 characters and must be unique in the
  # region: long ones keep a readable head and get a hash of the full name.
  elb_names = {
    for k, n in {
      nlb     = "${local.name}-nlb"
      writer  = "${local.name}-writer"
      readers = "${local.name}-readers"
    } : k => length(n) <= 32 ? n : "${substr(n, 0, 25)}-${substr(md5(n), 0, 6)}"
  }

  # The cluster's secrets (secrets.tf): the SSM parameter names the agents and the coordinator
  # read, whether the operator's SecureStrings or the generated secrets' Parameter Store references.
  replication_password_parameter = local.secret_parameters["replication-password"]
  rewind_password_parameter      = local.secret_parameters["rewind-password"]
  api_token_parameter            = local.secret_parameters["api-token"]
  admin_password_parameter       = local.secret_parameters["admin-password"]
  parameter_arn                  = "arn:${local.partition}:ssm:${local.region}:${local.account_id}:parameter"

  # Environment contract of the coordinator Lambda (lambda/ reads these).
  coordinator_environment = {
    PGDAEMON_TABLE           = local.table_name
    PGDAEMON_CLUSTERS        = var.cluster_name
    PGDAEMON_FENCING         = join(",", var.fencing)
    PGDAEMON_SNS_TOPIC_ARN   = aws_sns_topic.events.arn
    PGDAEMON_CLUSTER_TAG_KEY = var.cluster_tag_key
    # The agents' API token (SecureString), read at the first http fence.
    PGDAEMON_API_TOKEN_PARAMETER = local.api_token_parameter
    # One invocation may drive a transition to its end, leaving 30 s of the timeout to finish.
    PGDAEMON_RUN_BUDGET_MS = tostring((var.coordinator_timeout_seconds - 30) * 1000)
    RUST_LOG               = "info"
  }
}
