# Alarms on the coordinator's metrics (lambda/src/emf.rs: EMF lines in its log group, namespace
# pgdaemon, dimension Cluster) and on the Lambda's own errors, and one dashboard. The alarms and
# the dashboard are defined once, in templates/alarms.json and templates/dashboard.json, which
# the CDK stack reads too. infra/README.md ("Metrics and alarms") says what each
# alarm means and what to do.

locals {
  alarm_specs   = jsondecode(file("${path.module}/templates/alarms.json"))
  alarm_actions = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
}

# The cluster's alarms (dimension Cluster); the coordinator function's own (dimension
# FunctionName) belong to its module: modules/pgdaemon-coordinator, the cluster's or the fleet's.
resource "aws_cloudwatch_metric_alarm" "this" {
  for_each = { for a in local.alarm_specs : a.id => a if a.dimension == "cluster" }

  alarm_name          = "${local.name}-${each.key}"
  alarm_description   = replace(each.value.description, "$${cluster_name}", var.cluster_name)
  namespace           = each.value.namespace
  metric_name         = each.value.metric
  dimensions          = { Cluster = var.cluster_name }
  statistic           = each.value.statistic
  period              = each.value.period
  evaluation_periods  = each.value.evaluation_periods
  datapoints_to_alarm = each.value.datapoints_to_alarm
  threshold           = each.value.threshold
  comparison_operator = each.value.comparison
  treat_missing_data  = each.value.treat_missing_data
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
  tags                = local.tags
}

resource "aws_cloudwatch_dashboard" "this" {
  dashboard_name = local.name
  dashboard_body = templatefile("${path.module}/templates/dashboard.json", {
    region        = local.region
    cluster_name  = var.cluster_name
    function_name = local.coordinator.function_name
  })
}
