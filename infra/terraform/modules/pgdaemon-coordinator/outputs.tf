output "table_name" {
  value = aws_dynamodb_table.state.name
}

output "table_arn" {
  value = aws_dynamodb_table.state.arn
}

output "function_name" {
  value = aws_lambda_function.coordinator.function_name
}

output "function_arn" {
  value = aws_lambda_function.coordinator.arn
}

output "agent_alias_name" {
  value = aws_lambda_alias.agent_evaluate.name
}

output "agent_alias_arn" {
  value = aws_lambda_alias.agent_evaluate.arn
}

output "role_arn" {
  value = aws_iam_role.coordinator.arn
}

output "security_group_id" {
  value = aws_security_group.coordinator.id
}

output "events_topic_arn" {
  value = aws_sns_topic.events.arn
}

output "schedule_rule_name" {
  value = aws_cloudwatch_event_rule.schedule.name
}

output "alarm_names" {
  value = { for k, a in aws_cloudwatch_metric_alarm.function : k => a.alarm_name }
}
