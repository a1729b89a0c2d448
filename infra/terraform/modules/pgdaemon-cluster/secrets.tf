# The cluster's secrets, generated at deploy time: the replication and rewind roles' passwords,
# the agents' API token and the administrator role's password. Nobody creates them by hand.
#
# They are Secrets Manager secrets (pgdaemon/<cluster>/<name>), the one kind of secret both this
# module and the CDK stack can generate (CloudFormation cannot create an SSM SecureString). The
# agents and the coordinator read them with ssm:GetParameter through Parameter Store's reference
# to Secrets Manager (/aws/reference/secretsmanager/<name>), the secret source they already
# support. A variable naming your own SecureString replaces the generated secret.
#
# The values never enter the Terraform state: Secrets Manager generates them (GetRandomPassword,
# an ephemeral resource) and the secret version takes them as a write-only argument, written
# once (version 1). Hence Terraform >= 1.11 (versions.tf).

locals {
  operator_parameters = {
    "replication-password" = var.replication_password_parameter
    "rewind-password"      = var.rewind_password_parameter
    "api-token"            = var.api_token_parameter
    "admin-password"       = var.admin_password_parameter
  }
  # Secrets Manager names of the secrets the module generates (those without an operator's parameter).
  generated_secrets = { for k, v in local.operator_parameters : k => "pgdaemon/${var.cluster_name}/${k}" if v == null }
  secret_parameters = {
    for k, v in local.operator_parameters : k => v != null ? v : "/aws/reference/secretsmanager/pgdaemon/${var.cluster_name}/${k}"
  }
}

# Letters and digits only: safe in a libpq passfile, a connection string and an HTTP header.
ephemeral "aws_secretsmanager_random_password" "generated" {
  for_each            = local.generated_secrets
  password_length     = 48
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret" "generated" {
  # checkov:skip=CKV_AWS_149:Encrypted with the AWS-managed key aws/secretsmanager: the nodes and the coordinator then need no kms grant, and no other principal of the account can read the secret without secretsmanager:GetSecretValue on it.
  # checkov:skip=CKV2_AWS_57:No automatic rotation: a new replication, rewind or admin password must also be set on the role in Postgres, and the agents read the secrets at start; rotate by hand (infra/README.md).
  for_each                = local.generated_secrets
  name                    = each.value
  description             = "pgdaemon cluster ${var.cluster_name}: ${each.key} (generated at deploy time)"
  recovery_window_in_days = var.secret_recovery_window_days
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "generated" {
  for_each                 = local.generated_secrets
  secret_id                = aws_secretsmanager_secret.generated[each.key].id
  secret_string_wo         = ephemeral.aws_secretsmanager_random_password.generated[each.key].random_password
  secret_string_wo_version = 1
}
