# The Postgres nodes: one Auto Scaling group of identical instances, each running Postgres and
# the pgdaemon agent (systemd), registered with SSM so that the coordinator can fence them.

data "aws_ssm_parameter" "al2023" {
  count = var.ami_id == null ? 1 : 0
  name  = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-${var.agent_architecture}"
}

# The subnets' address ranges: the nodes and the coordinator's ENIs live in these subnets, so
# they are the agents' API allow-list (POST /demote, /failsafe) besides the members themselves.
data "aws_subnet" "nodes" {
  for_each = toset(var.subnet_ids)
  id       = each.value
}

locals {
  ami_id = var.ami_id != null ? var.ami_id : nonsensitive(data.aws_ssm_parameter.al2023[0].value)

  # The unit file lives with the agent's source; the fallback keeps the module usable on its own.
  agent_unit_path = "${path.module}/../../../../node-agent/systemd/pgdaemon-agent.service"
  agent_unit      = fileexists(local.agent_unit_path) ? file(local.agent_unit_path) : file("${path.module}/templates/pgdaemon-agent.service")

  # The cluster subnets' CIDRs: the agents' API allow-list besides the members, and the
  # networks pg_hba.conf admits the replication and rewind roles from (bootstrap peer_networks).
  subnet_cidrs = [for id in var.subnet_ids : data.aws_subnet.nodes[id].cidr_block]
  # The networks pg_hba.conf admits applications from. The NLB preserves client addresses for
  # instance targets, so these are the clients' own networks (variables.tf, client_networks).
  client_networks = var.client_networks != null ? var.client_networks : distinct(concat(var.client_cidr_blocks, local.subnet_cidrs))

  agent_config = templatefile("${path.module}/templates/pgdaemon.toml.tftpl", {
    cluster_name                   = var.cluster_name
    table_name                     = local.coordinator.table_name
    postgres_port                  = var.postgres_port
    agent_api_port                 = var.agent_api_port
    replication_password_parameter = local.replication_password_parameter
    rewind_password_parameter      = local.rewind_password_parameter
    api_token_parameter            = local.api_token_parameter
    # A fleet's coordinator runs in the fleet's subnets: its http fencing comes from there.
    api_allowlist   = jsonencode(distinct(concat(local.subnet_cidrs, local.fleet_mode ? var.fleet.coordinator_subnet_cidrs : [])))
    peer_networks   = jsonencode(local.subnet_cidrs)
    client_networks = jsonencode(local.client_networks)
    # The agents' alias, not the function: through it the coordinator carries out "evaluate" only.
    coordinator_function = "${local.coordinator.function_name}:${local.coordinator.agent_alias_name}"
    # [archive] (backups.tf): "" leaves the section out (archiving off).
    archive_destination = local.archive_destination
  })

  user_data = templatefile("${path.module}/templates/user-data.sh.tftpl", {
    agent_bucket             = local.upload_agent ? aws_s3_bucket.artifacts[0].id : ""
    agent_key                = local.agent_key
    agent_sha256             = local.agent_sha256
    agent_config             = local.agent_config
    agent_unit               = local.agent_unit
    postgres_port            = var.postgres_port
    admin_user               = local.admin_user
    admin_password_parameter = local.admin_password_parameter
    archive_destination      = local.archive_destination
  })
  # The administrator role the user data creates on the first primary (its password: secrets.tf).
  admin_user = "dbadmin"
}

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "agent" {
  name               = "${local.name}-agent"
  description        = "pgdaemon agent on the nodes of cluster ${var.cluster_name}: its own cluster's state items only"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "agent" {
  # checkov:skip=CKV_AWS_111:Only the SSM agent's statements use "*": ec2messages and ssmmessages have no resource-level permissions, and UpdateInstanceInformation is granted on "*" as in AWS's own agent policy (AmazonSSMManagedEC2InstanceDefaultPolicy).
  # checkov:skip=CKV_AWS_356:ssm:UpdateInstanceInformation on "*", as in AWS's own SSM agent policies: pinning the instance ARN form risks the agent's registration and with it ssm fencing; it only reports instance information.
  # Every item of the cluster has partition key = cluster name: the agents can neither read
  # nor write another cluster's lease, members or history, even in a shared table.
  # No DeleteItem: no agent code path deletes an item (member records expire by TTL). DynamoDB
  # has no condition key on the sort key, so within its own cluster an agent can still
  # overwrite any item with PutItem/UpdateItem (the lease, the cluster record, history): a
  # compromised node can disturb its own cluster, never another one (docs/security.md).
  statement {
    sid = "StateTableThisClusterOnly"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:BatchGetItem",
      "dynamodb:Query",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:ConditionCheckItem",
    ]
    # Also the cluster's registration item ("~registry", in its own partition), which puts
    # it in a fleet's index: no other right is needed for that.
    resources = [local.coordinator.table_arn]
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "dynamodb:LeadingKeys"
      values   = [var.cluster_name]
    }
  }

  # The cluster's secrets (replication and rewind passwords, API token, admin password), and no
  # other parameter. A generated secret is read through Parameter Store's reference to Secrets
  # Manager, which takes both this and secretsmanager:GetSecretValue on the secret itself.
  # (SecureStrings under the AWS-managed aws/ssm key need no kms grant; with a customer key,
  # grant kms:Decrypt on it.)
  statement {
    sid     = "ReadClusterSecrets"
    actions = ["ssm:GetParameter"]
    resources = [
      "${local.parameter_arn}${local.replication_password_parameter}",
      "${local.parameter_arn}${local.rewind_password_parameter}",
      "${local.parameter_arn}${local.api_token_parameter}",
      "${local.parameter_arn}${local.admin_password_parameter}",
    ]
  }

  dynamic "statement" {
    for_each = length(local.generated_secrets) > 0 ? [1] : []
    content {
      sid       = "ReadGeneratedSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [for k in sort(keys(local.generated_secrets)) : aws_secretsmanager_secret.generated[k].arn]
    }
  }

  # The agent binary: this one object (the key holds its sha256), nothing else in the bucket.
  dynamic "statement" {
    for_each = local.upload_agent ? [1] : []
    content {
      sid       = "ReadAgentBinary"
      actions   = ["s3:GetObject"]
      resources = ["${aws_s3_bucket.artifacts[0].arn}/${local.agent_key}"]
    }
  }

  # Backups (backups.tf): barman-cloud under this cluster's prefix, and nothing of another
  # cluster's. Every barman-cloud command (3.4) first checks the bucket with HeadBucket, which
  # takes s3:ListBucket without a prefix: S3 cannot tell it from a listing without a prefix, so
  # this statement also lets a node list the bucket's key names (never read the objects). In
  # the bucket the module creates for the cluster those are its own; in a bucket shared by
  # several clusters (bucket_name), their key names too (infra/README.md, "Backups bucket").
  dynamic "statement" {
    for_each = local.backups_enabled ? [1] : []
    content {
      sid       = "BackupBucketHeadForBarman"
      actions   = ["s3:ListBucket"]
      resources = distinct(concat([local.backup_bucket_arn], [for r in local.backup_restore_sources : r.bucket_arn]))
      condition {
        test     = "Null"
        variable = "s3:prefix"
        values   = ["true"]
      }
    }
  }
  # Listing under "<prefix>/<cluster>/" only; barman always lists with that trailing slash. Not
  # "<prefix>/<cluster>" without it: that would also list cluster "<cluster>-2"'s keys.
  dynamic "statement" {
    for_each = local.backups_enabled ? [1] : []
    content {
      sid       = "BackupsListThisCluster"
      actions   = ["s3:ListBucket"]
      resources = [local.backup_bucket_arn]
      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${local.backup_cluster_prefix}*"]
      }
    }
  }
  # WAL archive and restore, base backups, and barman's retention deleting old ones. No
  # s3:DeleteObjectVersion or GetObjectVersion: a delete leaves a noncurrent version the node
  # cannot reach (versioned bucket), recoverable by an operator for noncurrent_days. No
  # s3:AbortMultipartUpload: the bucket's lifecycle aborts a failed upload after 7 days.
  dynamic "statement" {
    for_each = local.backups_enabled ? [1] : []
    content {
      sid       = "BackupsReadWriteThisCluster"
      actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
      resources = ["${local.backup_bucket_arn}/${local.backup_cluster_prefix}*"]
    }
  }
  # Restoring from other clusters' backups (backups.restore_from_clusters): read and list their
  # prefix, one source per statement (no bucket x prefix cross product), never write.
  dynamic "statement" {
    for_each = local.backup_restore_sources
    content {
      sid       = "RestoreSourceList${statement.key}"
      actions   = ["s3:ListBucket"]
      resources = [statement.value.bucket_arn]
      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${statement.value.key_prefix}*"]
      }
    }
  }
  dynamic "statement" {
    for_each = local.backup_restore_sources
    content {
      sid       = "RestoreSourceRead${statement.key}"
      actions   = ["s3:GetObject"]
      resources = ["${statement.value.bucket_arn}/${statement.value.key_prefix}*"]
    }
  }

  # The fast path: a replica that sees the lease go stale asks for a coordinator run at once.
  # Only through the agents' alias (its qualified ARN), on which the coordinator refuses every
  # action but "evaluate": no forced failover, switchover or pause from a node. The unqualified
  # function (operators, the schedule) is not granted.
  statement {
    sid       = "InvokeCoordinatorEvaluateOnly"
    actions   = ["lambda:InvokeFunction"]
    resources = [local.coordinator.agent_alias_arn]
  }

  # The SSM agent, in place of the AWS managed AmazonSSMManagedInstanceCore: that policy also
  # grants ssm:GetParameter(s) on every parameter of the account (other clusters' replication
  # passwords), GetDocument on every document, and the State Manager, Patch Manager, Inventory
  # and Distributor calls. (AWS's newer AmazonSSMManagedEC2InstanceDefaultPolicy drops the
  # parameters too; these statements are its subset.) Run Command (ssm fencing) and Session
  # Manager need only these:
  # - registration and heartbeat of the managed instance (ping status "Online");
  statement {
    sid       = "SsmAgentRegistration"
    actions   = ["ssm:UpdateInstanceInformation"]
    resources = ["*"]
  }
  # - Run Command delivery: the ec2messages channel (poll, acknowledge, reply), and the
  #   ssmmessages control channel that newer agents also take commands from, which carries
  #   Session Manager. No resource-level permissions exist for these two services.
  # Left out on purpose: ssm:ListInstanceAssociations, DescribeAssociation,
  # UpdateInstanceAssociationStatus, UpdateAssociationStatus, ListAssociations (State Manager:
  # the agent logs an access error when it polls for associations, commands still run),
  # GetDocument/DescribeDocument (a command's document arrives in the message), PutInventory,
  # PutComplianceItems, GetDeployablePatchSnapshotForInstance, GetManifest,
  # PutConfigurePackageResult; ssm:DescribeInstanceProperties and DescribeDocumentParameters are
  # console calls the agent never makes. Add the State Manager ones yourself if you use it.
  statement {
    sid = "SsmAgentMessages"
    actions = [
      "ec2messages:AcknowledgeMessage",
      "ec2messages:DeleteMessage",
      "ec2messages:FailMessage",
      "ec2messages:GetEndpoint",
      "ec2messages:GetMessages",
      "ec2messages:SendReply",
      "ssmmessages:CreateControlChannel",
      "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel",
      "ssmmessages:OpenDataChannel",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "agent" {
  name   = "pgdaemon-agent"
  role   = aws_iam_role.agent.id
  policy = data.aws_iam_policy_document.agent.json
}

resource "aws_iam_instance_profile" "agent" {
  name = "${local.name}-agent"
  role = aws_iam_role.agent.name
  tags = local.tags
}

# --- security groups: Postgres and the agent API only inside the cluster and from the NLB ----

resource "aws_security_group" "nodes" {
  name        = "${local.name}-nodes"
  description = "pgdaemon nodes: Postgres and agent API only from the cluster, its NLB and its coordinator"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_security_group_rule" "nodes_postgres_from_cluster" {
  description              = "Postgres replication and pg_rewind between the nodes"
  type                     = "ingress"
  security_group_id        = aws_security_group.nodes.id
  protocol                 = "tcp"
  from_port                = var.postgres_port
  to_port                  = var.postgres_port
  source_security_group_id = aws_security_group.nodes.id
}

resource "aws_security_group_rule" "nodes_agent_from_cluster" {
  description              = "Agent API between the nodes"
  type                     = "ingress"
  security_group_id        = aws_security_group.nodes.id
  protocol                 = "tcp"
  from_port                = var.agent_api_port
  to_port                  = var.agent_api_port
  source_security_group_id = aws_security_group.nodes.id
}

resource "aws_security_group_rule" "nodes_postgres_from_nlb" {
  description              = "Client connections forwarded by the NLB"
  type                     = "ingress"
  security_group_id        = aws_security_group.nodes.id
  protocol                 = "tcp"
  from_port                = var.postgres_port
  to_port                  = var.postgres_port
  source_security_group_id = aws_security_group.nlb.id
}

resource "aws_security_group_rule" "nodes_agent_from_nlb" {
  description              = "NLB health checks on /primary and /replica"
  type                     = "ingress"
  security_group_id        = aws_security_group.nodes.id
  protocol                 = "tcp"
  from_port                = var.agent_api_port
  to_port                  = var.agent_api_port
  source_security_group_id = aws_security_group.nlb.id
}

resource "aws_security_group_rule" "nodes_agent_from_coordinator" {
  description              = "Coordinator Lambda calling the agent API (http fencing)"
  type                     = "ingress"
  security_group_id        = aws_security_group.nodes.id
  protocol                 = "tcp"
  from_port                = var.agent_api_port
  to_port                  = var.agent_api_port
  source_security_group_id = local.coordinator.security_group_id
}

resource "aws_security_group_rule" "nodes_egress_cluster" {
  description              = "Replication and agent API towards the other nodes"
  type                     = "egress"
  security_group_id        = aws_security_group.nodes.id
  protocol                 = "tcp"
  from_port                = 0
  to_port                  = 65535
  source_security_group_id = aws_security_group.nodes.id
}

resource "aws_security_group_rule" "nodes_egress_https" {
  description       = "HTTPS to the AWS APIs (DynamoDB, Lambda, SSM) and the package repository"
  type              = "egress"
  security_group_id = aws_security_group.nodes.id
  protocol          = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_blocks       = ["0.0.0.0/0"]
}

# --- launch template and Auto Scaling group -------------------------------------------------

resource "aws_launch_template" "nodes" {
  name                   = "${local.name}-node"
  description            = "pgdaemon Postgres node for cluster ${var.cluster_name}"
  image_id               = local.ami_id
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.nodes.id]
  user_data              = base64encode(local.user_data)
  update_default_version = true
  ebs_optimized          = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.agent.arn
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required" # IMDSv2 only
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  block_device_mappings {
    device_name = "/dev/xvda"
    ebs {
      volume_size           = 20
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }

  # PGDATA. Kept on its own volume so that the root volume can be replaced by a new AMI.
  block_device_mappings {
    device_name = "/dev/xvdb"
    ebs {
      volume_size           = var.data_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      kms_key_id            = var.kms_key_arn
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${local.name}-node" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = local.tags
  }

  tags = local.tags
}

resource "aws_autoscaling_group" "nodes" {
  name                = "${local.name}-nodes"
  min_size            = var.node_count
  max_size            = var.node_count
  desired_capacity    = var.node_count
  vpc_zone_identifier = var.subnet_ids
  target_group_arns   = [aws_lb_target_group.writer.arn, aws_lb_target_group.readers.arn]

  # EC2 health only: every replica is "unhealthy" in the writer target group by design, so ELB
  # health would have the group replace healthy replicas. A fenced (stopped) old primary is
  # replaced by a fresh node, which joins as a replica (pg_basebackup).
  health_check_type         = "EC2"
  health_check_grace_period = 300

  launch_template {
    id      = aws_launch_template.nodes.id
    version = aws_launch_template.nodes.latest_version
  }

  # A node's first boot reads these: the agent object and the secrets must exist before it.
  # So must the backup bucket, encrypted, versioned and TLS-only before the first WAL arrives.
  depends_on = [
    aws_s3_object.agent, aws_secretsmanager_secret_version.generated, aws_iam_role_policy.agent,
    aws_s3_bucket_versioning.backups, aws_s3_bucket_server_side_encryption_configuration.backups,
    aws_s3_bucket_public_access_block.backups, aws_s3_bucket_policy.backups,
  ]

  dynamic "tag" {
    for_each = local.tags
    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}
