# The coordinator: a scheduled Lambda that reads the cluster state, fences a dead primary
# and promotes the best replica. Agents also invoke it directly (the fast path, DESIGN.md 4).

resource "aws_sns_topic" "events" {
  name              = "${local.name}-events"
  kms_master_key_id = coalesce(var.kms_key_arn, "alias/aws/sns")
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "coordinator" {
  name              = "/aws/lambda/${local.coordinator_function_name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = local.tags
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
  name               = "${local.name}-coordinator"
  description        = "pgdaemon coordinator for cluster ${var.cluster_name}: fences and promotes only this cluster's instances"
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "coordinator" {
  # Read and write only this table, and within it only this cluster's items.
  statement {
    sid = "StateTableThisClusterOnly"
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
    condition {
      test     = "ForAllValues:StringEquals"
      variable = "dynamodb:LeadingKeys"
      values   = [var.cluster_name]
    }
  }

  statement {
    sid       = "StateTableDescribe"
    actions   = ["dynamodb:DescribeTable"]
    resources = [aws_dynamodb_table.state.arn]
  }

  # Fencing by EC2: stop only instances tagged as members of this cluster. An instance
  # without the tag (or with another cluster's value) does not match and is refused.
  statement {
    sid       = "StopOnlyThisClustersInstances"
    actions   = ["ec2:StopInstances"]
    resources = [local.instance_arn_pattern]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/${var.cluster_tag_key}"
      values   = [var.cluster_name]
    }
  }

  # Fencing by SSM: run commands only on this cluster's instances...
  statement {
    sid       = "RunCommandOnlyOnThisClustersInstances"
    actions   = ["ssm:SendCommand"]
    resources = [local.instance_arn_pattern]
    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/${var.cluster_tag_key}"
      values   = [var.cluster_name]
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

  # The agents' API token (http fencing sends it), and no other parameter; a generated token
  # through Parameter Store's reference to its Secrets Manager secret.
  statement {
    sid       = "ReadAgentApiToken"
    actions   = ["ssm:GetParameter"]
    resources = ["${local.parameter_arn}${local.api_token_parameter}"]
  }

  dynamic "statement" {
    for_each = contains(keys(local.generated_secrets), "api-token") ? [1] : []
    content {
      sid       = "ReadGeneratedApiToken"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [aws_secretsmanager_secret.generated["api-token"].arn]
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

resource "aws_security_group" "coordinator" {
  name        = "${local.name}-coordinator"
  description = "pgdaemon coordinator Lambda: egress to AWS APIs and the agents API only"
  vpc_id      = var.vpc_id
  tags        = local.tags
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

resource "aws_security_group_rule" "coordinator_to_agents" {
  description              = "Agent HTTP API on the cluster nodes (http fencing, demote)"
  type                     = "egress"
  security_group_id        = aws_security_group.coordinator.id
  protocol                 = "tcp"
  from_port                = var.agent_api_port
  to_port                  = var.agent_api_port
  source_security_group_id = aws_security_group.nodes.id
}

resource "aws_lambda_function" "coordinator" {
  # checkov:skip=CKV_AWS_116:No DLQ: a lost invocation is harmless, the schedule re-runs the coordinator every minute and every step is idempotent (S5).
  # checkov:skip=CKV_AWS_173:The environment holds only names and ARNs, no secrets; the AWS-managed key already encrypts it at rest.
  # checkov:skip=CKV_AWS_50:The Rust runtime emits no X-Ray segments; every decision is logged with its reason instead.
  # checkov:skip=CKV_AWS_272:Code signing needs a Signer profile the user owns; the zip is built from this repository by scripts/lambda-zip.
  function_name                  = local.coordinator_function_name
  description                    = "pgdaemon coordinator for cluster ${var.cluster_name}"
  role                           = aws_iam_role.coordinator.arn
  runtime                        = "provided.al2023"
  handler                        = "bootstrap"
  architectures                  = [var.lambda_architecture]
  filename                       = var.lambda_zip_path
  source_code_hash               = filebase64sha256(var.lambda_zip_path)
  timeout                        = var.coordinator_timeout_seconds
  memory_size                    = var.coordinator_memory_mb
  reserved_concurrent_executions = 1 # two runs never act on the cluster at once

  environment {
    variables = local.coordinator_environment
  }

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [aws_security_group.coordinator.id]
  }

  tags = local.tags

  depends_on = [
    aws_cloudwatch_log_group.coordinator,
    aws_iam_role_policy.coordinator,
    aws_iam_role_policy_attachment.coordinator_vpc,
  ]
}

# The agents' way in (the fast path): the node role may invoke this alias and not the function
# itself, and invoked through it the coordinator carries out "evaluate" only (lambda/src/
# handler.rs refuses the rest). It points at $LATEST, so agents and the schedule run the same
# code; reserved concurrency belongs to the function, so the single slot covers both.
resource "aws_lambda_alias" "agent_evaluate" {
  name             = "agent-evaluate"
  description      = "pgdaemon agents' fast path: evaluate only"
  function_name    = aws_lambda_function.coordinator.function_name
  function_version = "$LATEST"
}

resource "aws_cloudwatch_event_rule" "schedule" {
  name                = "${local.name}-coordinator-schedule"
  description         = "Safety-net run of the pgdaemon coordinator for ${var.cluster_name}"
  schedule_expression = var.schedule_expression
  tags                = local.tags
}

resource "aws_cloudwatch_event_target" "coordinator" {
  rule      = aws_cloudwatch_event_rule.schedule.name
  target_id = "coordinator"
  arn       = aws_lambda_function.coordinator.arn

  retry_policy {
    # A throttled run (the previous one still holds the single slot) is not worth retrying for
    # long: the next scheduled run comes within a minute.
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
