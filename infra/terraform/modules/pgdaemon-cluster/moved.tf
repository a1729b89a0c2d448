# The table and the coordinator moved into modules/pgdaemon-coordinator (shared with the fleet
# module). These keep an existing deployment's resources where they are: without them Terraform
# would destroy and recreate the table (refused while deletion protection is on) and the function.
moved {
  from = aws_dynamodb_table.state
  to   = module.coordinator[0].aws_dynamodb_table.state
}

moved {
  from = aws_sns_topic.events
  to   = module.coordinator[0].aws_sns_topic.events
}

moved {
  from = aws_cloudwatch_log_group.coordinator
  to   = module.coordinator[0].aws_cloudwatch_log_group.coordinator
}

moved {
  from = aws_iam_role.coordinator
  to   = module.coordinator[0].aws_iam_role.coordinator
}

moved {
  from = aws_iam_role_policy.coordinator
  to   = module.coordinator[0].aws_iam_role_policy.coordinator
}

moved {
  from = aws_iam_role_policy_attachment.coordinator_vpc
  to   = module.coordinator[0].aws_iam_role_policy_attachment.coordinator_vpc
}

moved {
  from = aws_security_group.coordinator
  to   = module.coordinator[0].aws_security_group.coordinator
}

moved {
  from = aws_security_group_rule.coordinator_to_aws_apis
  to   = module.coordinator[0].aws_security_group_rule.coordinator_to_aws_apis
}

moved {
  from = aws_lambda_function.coordinator
  to   = module.coordinator[0].aws_lambda_function.coordinator
}

moved {
  from = aws_lambda_alias.agent_evaluate
  to   = module.coordinator[0].aws_lambda_alias.agent_evaluate
}

moved {
  from = aws_cloudwatch_event_rule.schedule
  to   = module.coordinator[0].aws_cloudwatch_event_rule.schedule
}

moved {
  from = aws_cloudwatch_event_target.coordinator
  to   = module.coordinator[0].aws_cloudwatch_event_target.coordinator
}

moved {
  from = aws_lambda_permission.schedule
  to   = module.coordinator[0].aws_lambda_permission.schedule
}

moved {
  from = aws_cloudwatch_metric_alarm.this["lambda-errors"]
  to   = module.coordinator[0].aws_cloudwatch_metric_alarm.function["lambda-errors"]
}
