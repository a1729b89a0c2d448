# The state table and the coordinator (a scheduled Lambda that reads the clusters' state, fences
# a dead primary and promotes the best replica; agents also invoke it directly, the fast path,
# DESIGN.md 4), for one cluster (pgdaemon-cluster) or a fleet of them (pgdaemon-fleet). Defined
# once here so that the two cannot drift; the resource names are those the cluster module used
# before it called this module (its moved.tf maps the old addresses here).

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

locals {
  partition     = data.aws_partition.current.partition
  region        = data.aws_region.current.name
  account_id    = data.aws_caller_identity.current.account_id
  function_name = "${var.name}-coordinator"
  # The function's unqualified ARN, built from its name: the role's policy names it (the fleet's
  # shards are invoked on it) without depending on the function, which depends on the role.
  function_arn         = "arn:${local.partition}:lambda:${local.region}:${local.account_id}:function:${local.function_name}"
  instance_arn_pattern = "arn:${local.partition}:ec2:${local.region}:${local.account_id}:instance/*"
  fleet_index          = "fleet"

  # Environment contract of the coordinator Lambda (lambda/ reads these).
  environment = merge(
    {
      PGDAEMON_TABLE = var.table_name
      # registry: evaluate every cluster registered in the fleet index (plus PGDAEMON_CLUSTERS);
      # off: exactly PGDAEMON_CLUSTERS.
      PGDAEMON_DISCOVERY       = var.fleet_mode ? "registry" : "off"
      PGDAEMON_FENCING         = join(",", var.fencing)
      PGDAEMON_SNS_TOPIC_ARN   = aws_sns_topic.events.arn
      PGDAEMON_CLUSTER_TAG_KEY = var.cluster_tag_key
      # The agents' API token (SecureString), read at the first http fence; in a fleet, {cluster}
      # stands for each cluster's name.
      PGDAEMON_API_TOKEN_PARAMETER = var.api_token_parameter
      # One invocation may drive a transition to its end, leaving 30 s of the timeout to finish.
      PGDAEMON_RUN_BUDGET_MS = tostring((var.timeout_seconds - 30) * 1000)
      RUST_LOG               = "info"
    },
    length(var.clusters) > 0 ? { PGDAEMON_CLUSTERS = join(",", var.clusters) } : {},
    var.fleet_mode ? { PGDAEMON_CLUSTERS_PER_INVOCATION = tostring(var.clusters_per_invocation) } : {},
  )
}

# --- state table (DESIGN.md section 2) ------------------------------------------------------------
# Every item of a cluster shares the partition key `cluster` = cluster name, so IAM can confine a
# principal to one cluster with dynamodb:LeadingKeys. The fleet index lists the clusters: every
# agent writes its cluster's registration item (item "~registry", fleet = "pgdaemon") into its own
# partition, and only those items carry `fleet`, so the index holds one entry per cluster.
resource "aws_dynamodb_table" "state" {
  name                        = var.table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "cluster"
  range_key                   = "item"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "cluster"
    type = "S"
  }

  attribute {
    name = "item"
    type = "S"
  }

  attribute {
    name = "fleet"
    type = "S"
  }

  # Added to an existing table online (DynamoDB backfills it; the table stays available).
  global_secondary_index {
    name            = local.fleet_index
    hash_key        = "fleet"
    range_key       = "cluster"
    projection_type = "KEYS_ONLY"
  }

  # Only garbage-collects dead member records; DynamoDB deletes "typically within two days",
  # so expiry is never read as evidence of liveness.
  ttl {
    attribute_name = "expire_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  tags = var.tags
}

resource "aws_sns_topic" "events" {
  name              = "${var.name}-events"
  kms_master_key_id = coalesce(var.kms_key_arn, "alias/aws/sns")
  tags              = var.tags
}

resource "aws_cloudwatch_log_group" "coordinator" {
  name              = "/aws/lambda/${local.function_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = var.tags
}

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "coordinator" {
  name               = "${var.name}-coordinator"
  description        = var.fleet_mode ? "pgdaemon coordinator for ${var.subject}: fences and promotes only instances tagged as members of a cluster" : "pgdaemon coordinator for ${var.subject}: fences and promotes only this cluster's instances"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = var.tags
}

data "aws_iam_policy_document" "coordinator" {
  # One cluster: this table, and within it only this cluster's items. A fleet: every item of the
  # table (it serves every registered cluster; which ones is known only at run time).
  statement {
    sid = var.fleet_mode ? "StateTableAllClusters" : "StateTableThisClusterOnly"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:BatchGetItem",
      "dynamodb:Query",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:DeleteItem",
      "dynamodb:ConditionCheckItem",
    ]
    resources = [aws_dynamodb_table.state.arn]
    dynamic "condition" {
      for_each = var.fleet_mode ? [] : [1]
      content {
        test     = "ForAllValues:StringEquals"
        variable = "dynamodb:LeadingKeys"
        values   = var.clusters
      }
    }
  }

  # A fleet lists its clusters with a Query on the fleet index (keys only).
  dynamic "statement" {
    for_each = var.fleet_mode ? [1] : []
    content {
      sid       = "ListRegisteredClusters"
      actions   = ["dynamodb:Query"]
      resources = ["${aws_dynamodb_table.state.arn}/index/${local.fleet_index}"]
    }
  }

  statement {
    sid       = "StateTableDescribe"
    actions   = ["dynamodb:DescribeTable"]
    resources = [aws_dynamodb_table.state.arn]
  }

  # Fencing by EC2: stop only instances tagged as members of this cluster (one cluster), or of
  # some cluster (a fleet: the tag key present; the Lambda checks that the value is the cluster
  # it fences for before every call). An instance without the tag does not match and is refused.
  statement {
    sid       = var.fleet_mode ? "StopOnlyClusterMemberInstances" : "StopOnlyThisClustersInstances"
    actions   = ["ec2:StopInstances"]
    resources = [local.instance_arn_pattern]
    condition {
      test     = var.fleet_mode ? "Null" : "StringEquals"
      variable = "aws:ResourceTag/${var.cluster_tag_key}"
      values   = var.fleet_mode ? ["false"] : var.clusters
    }
  }

  # Fencing by SSM: run commands only on the same instances...
  statement {
    sid       = var.fleet_mode ? "RunCommandOnlyOnClusterMemberInstances" : "RunCommandOnlyOnThisClustersInstances"
    actions   = ["ssm:SendCommand"]
    resources = [local.instance_arn_pattern]
    condition {
      test     = var.fleet_mode ? "Null" : "StringEquals"
      variable = "aws:ResourceTag/${var.cluster_tag_key}"
      values   = var.fleet_mode ? ["false"] : var.clusters
    }
  }

  # ...and only the stock shell document (a document is not tagged with the cluster). The
  # account is "*" because AWS-owned documents have an empty account in their ARN; the "AWS-"
  # name prefix is reserved for Amazon, so no other account can publish a look-alike.
  statement {
    sid       = "RunCommandDocument"
    actions   = ["ssm:SendCommand"]
    resources = ["arn:${local.partition}:ssm:${local.region}:*:document/AWS-RunShellScript"]
  }

  # Describe* and GetCommandInvocation have no resource-level permissions in IAM: they accept
  # only "*" and ignore resource tags. They are read-only.
  statement {
    sid = "ReadOnlyWithoutResourceLevelSupport"
    actions = [
      "ec2:DescribeInstances",
      "ec2:DescribeInstanceStatus",
      "ssm:GetCommandInvocation",
    ]
    resources = ["*"]
  }

  # The agents' API token (http fencing sends it), and no other parameter (a fleet: each
  # cluster's, by the naming pattern); a generated token through Parameter Store's reference to
  # its Secrets Manager secret.
  statement {
    sid       = "ReadAgentApiToken"
    actions   = ["ssm:GetParameter"]
    resources = [var.api_token_parameter_arn]
  }

  dynamic "statement" {
    for_each = length(var.api_token_secret_arns) > 0 ? [1] : []
    content {
      sid       = "ReadGeneratedApiToken"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = var.api_token_secret_arns
    }
  }

  # A fleet's scheduled run that finds more clusters than one invocation takes invokes its own
  # function (asynchronously) once per further shard: the unqualified function, nothing else.
  dynamic "statement" {
    for_each = var.fleet_mode ? [1] : []
    content {
      sid       = "InvokeSelfForShards"
      actions   = ["lambda:InvokeFunction"]
      resources = [local.function_arn]
    }
  }

  statement {
    sid       = "PublishFailoverEvents"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.events.arn]
  }

  statement {
    sid       = "OwnLogGroupOnly"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.coordinator.arn}:*"]
  }
}

resource "aws_iam_role_policy" "coordinator" {
  name   = "pgdaemon-coordinator"
  role   = aws_iam_role.coordinator.id
  policy = data.aws_iam_policy_document.coordinator.json
}

# ENI management for running inside the VPC (needed to reach the agents' API for http
# fencing). AWS's managed policy; its actions have no resource-level permissions.
resource "aws_iam_role_policy_attachment" "coordinator_vpc" {
  role       = aws_iam_role.coordinator.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

# Egress to the agents' API is added by each cluster (towards its own nodes' group).
resource "aws_security_group" "coordinator" {
  name        = "${var.name}-coordinator"
  description = "pgdaemon coordinator Lambda: egress to AWS APIs and the agents API only"
  vpc_id      = var.vpc_id
  tags        = var.tags
}

resource "aws_security_group_rule" "coordinator_to_aws_apis" {
  description       = "HTTPS to the AWS APIs (DynamoDB, EC2, SSM, SNS, Logs) via NAT or VPC endpoints"
  type              = "egress"
  security_group_id = aws_security_group.coordinator.id
  protocol          = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_blocks       = ["0.0.0.0/0"]
}

resource "aws_lambda_function" "coordinator" {
  # checkov:skip=CKV_AWS_116:No DLQ: a lost invocation is harmless, the schedule re-runs the coordinator every minute and every step is idempotent (S5).
  # checkov:skip=CKV_AWS_173:The environment holds only names and ARNs, no secrets; the AWS-managed key already encrypts it at rest.
  # checkov:skip=CKV_AWS_50:The Rust runtime emits no X-Ray segments; every decision is logged with its reason instead.
  # checkov:skip=CKV_AWS_272:Code signing needs a Signer profile the user owns; the zip is built from this repository by scripts/lambda-zip.
  function_name    = local.function_name
  description      = "pgdaemon coordinator for ${var.subject}"
  role             = aws_iam_role.coordinator.arn
  runtime          = "provided.al2023"
  handler          = "bootstrap"
  architectures    = [var.lambda_architecture]
  filename         = var.lambda_zip_path
  source_code_hash = filebase64sha256(var.lambda_zip_path)
  timeout          = var.timeout_seconds
  memory_size      = var.memory_mb
  # One cluster: 1, two runs never act on it at once. A fleet: its shards run side by side
  # (the per-cluster coordinator lock in the table still lets one run act on a cluster).
  reserved_concurrent_executions = var.reserved_concurrency

  environment {
    variables = local.environment
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [aws_security_group.coordinator.id]
  }

  tags = var.tags

  depends_on = [
    aws_cloudwatch_log_group.coordinator,
    aws_iam_role_policy.coordinator,
    aws_iam_role_policy_attachment.coordinator_vpc,
  ]
}

# The agents' way in (the fast path): the node role may invoke this alias and not the function
# itself, and invoked through it the coordinator carries out "evaluate" only (lambda/src/
# handler.rs refuses the rest). It points at $LATEST, so agents and the schedule run the same
# code; reserved concurrency belongs to the function, so its slots cover both.
resource "aws_lambda_alias" "agent_evaluate" {
  name             = "agent-evaluate"
  description      = "pgdaemon agents' fast path: evaluate only"
  function_name    = aws_lambda_function.coordinator.function_name
  function_version = "$LATEST"
}

resource "aws_cloudwatch_event_rule" "schedule" {
  name                = "${var.name}-coordinator-schedule"
  description         = "Safety-net run of the pgdaemon coordinator for ${var.alarm_subject}"
  schedule_expression = var.schedule_expression
  tags                = var.tags
}

resource "aws_cloudwatch_event_target" "coordinator" {
  rule      = aws_cloudwatch_event_rule.schedule.name
  target_id = "coordinator"
  arn       = aws_lambda_function.coordinator.arn

  retry_policy {
    # A throttled run (the previous one still holds the slot) is not worth retrying for long:
    # the next scheduled run comes within a minute.
    maximum_event_age_in_seconds = 60
    maximum_retry_attempts       = 0
  }
}

resource "aws_lambda_permission" "schedule" {
  statement_id  = "AllowEventBridgeSchedule"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.coordinator.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.schedule.arn
}

# A fleet's shard invocations (asynchronous, to itself): one that waits for a slot longer than a
# minute or fails is not retried; the next scheduled run starts the shards again.
resource "aws_lambda_function_event_invoke_config" "shards" {
  count                        = var.fleet_mode ? 1 : 0
  function_name                = aws_lambda_function.coordinator.function_name
  maximum_event_age_in_seconds = 60
  maximum_retry_attempts       = 0
}

# --- the function's own alarms (templates/alarms.json entries with dimension "function"); the
# per-cluster ones are the cluster module's. infra/README.md ("Metrics and alarms").
locals {
  function_alarms = { for a in jsondecode(file("${path.module}/../pgdaemon-cluster/templates/alarms.json")) : a.id => a if a.dimension == "function" }
  alarm_actions   = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
}

resource "aws_cloudwatch_metric_alarm" "function" {
  for_each = local.function_alarms

  alarm_name          = "${var.name}-${each.key}"
  alarm_description   = replace(each.value.description, "$${cluster_name}", var.alarm_subject)
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  dimensions          = { FunctionName = aws_lambda_function.coordinator.function_name }
  statistic           = each.value.statistic
  period              = each.value.period
  evaluation_periods  = each.value.evaluation_periods
  datapoints_to_alarm = each.value.datapoints_to_alarm
  threshold           = each.value.threshold
  comparison_operator = each.value.comparison
  treat_missing_data  = each.value.treat_missing_data
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = var.tags
}
