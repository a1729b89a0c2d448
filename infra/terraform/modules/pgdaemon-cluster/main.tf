data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  name       = "pgdaemon-${var.cluster_name}"
  table_name = coalesce(var.table_name, local.name)
  # Fleet mode (var.fleet set): the fleet's table and coordinator; none of this cluster's own.
  fleet_mode = var.fleet != null
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
}
