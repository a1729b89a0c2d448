# One coordinator for many clusters (fleet mode): the shared state table with its fleet index,
# the coordinator Lambda that evaluates every registered cluster, its schedule, IAM, alarms and
# dashboard. Clusters join with the pgdaemon-cluster module's `fleet = module.<this>.fleet`.

variable "name" {
  description = "Name of the fleet: part of every resource name (pgdaemon-<name>, pgdaemon-<name>-coordinator). Same rules as a cluster name."
  type        = string
  default     = "fleet"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.name))
    error_message = "name must be 3-32 characters of lower-case letters, digits and '-', starting with a letter and not ending with '-'."
  }
}

variable "table_name" {
  description = "Name of the shared DynamoDB state table. Defaults to \"pgdaemon-<name>\"."
  type        = string
  default     = null

  validation {
    condition     = var.table_name == null || can(regex("^[A-Za-z0-9_.-]{3,255}$", var.table_name))
    error_message = "table_name must be 3-255 characters of letters, digits, '_', '-' and '.'."
  }
}

variable "clusters" {
  description = "Clusters the coordinator always evaluates (PGDAEMON_CLUSTERS), in addition to those registered in the table's fleet index (every agent registers its cluster). Usually empty."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.clusters : can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", c))]) && length(distinct(var.clusters)) == length(var.clusters)
    error_message = "clusters must be distinct cluster names (3-32 characters of lower-case letters, digits and '-')."
  }
}

variable "clusters_per_invocation" {
  description = "PGDAEMON_CLUSTERS_PER_INVOCATION: clusters one invocation evaluates; a scheduled run that finds more invokes the function asynchronously once per further shard of this size."
  type        = number
  default     = 250

  validation {
    condition     = var.clusters_per_invocation >= 1 && var.clusters_per_invocation <= 10000 && floor(var.clusters_per_invocation) == var.clusters_per_invocation
    error_message = "clusters_per_invocation must be a whole number from 1 to 10000."
  }
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions of the fleet's coordinator: the scheduled run, its shards and the agents' fast-path invocations share them. At least the number of shards (registered clusters / clusters_per_invocation, rounded up) plus a few for the agents; a shard that finds no slot within a minute is dropped until the next schedule. Two runs never act on one cluster at once whatever this is: the per-cluster coordinator lock in the table admits one."
  type        = number
  default     = 10

  validation {
    condition     = var.reserved_concurrency >= 2 && var.reserved_concurrency <= 1000 && floor(var.reserved_concurrency) == var.reserved_concurrency
    error_message = "reserved_concurrency must be a whole number from 2 to 1000."
  }
}

variable "api_token_parameter" {
  description = "SSM parameter of each cluster's agents' API token (sent by the http fencer), with {cluster} standing for the cluster's name. The default is where the pgdaemon-cluster module generates it. The coordinator may read the parameters (and, for a /aws/reference/secretsmanager/ reference, the secrets) matching this pattern with {cluster} as a wildcard, and no other."
  type        = string
  default     = "/aws/reference/secretsmanager/pgdaemon/{cluster}/api-token"

  validation {
    condition     = can(regex("^/[A-Za-z0-9_./-]+$", replace(var.api_token_parameter, "{cluster}", "c"))) && length(var.api_token_parameter) <= 1011
    error_message = "api_token_parameter must be an absolute SSM parameter name (starting with '/'), optionally holding the placeholder {cluster}."
  }
}

variable "cluster_tag_key" {
  description = "Tag key that marks an EC2 instance as a member of a cluster (value = the cluster name); every cluster of the fleet must use the same. The coordinator may stop, and send SSM commands to, only instances carrying it, and checks before each call that the value is the cluster it fences for."
  type        = string
  default     = "pgdaemon:cluster"

  validation {
    condition     = length(var.cluster_tag_key) > 0 && length(var.cluster_tag_key) <= 128 && !startswith(lower(var.cluster_tag_key), "aws:")
    error_message = "cluster_tag_key must be 1-128 characters and must not start with the reserved prefix \"aws:\"."
  }
}

variable "vpc_id" {
  description = "VPC of the coordinator Lambda. The clusters of the fleet must be in it too: the coordinator reaches their agents' API by security group (http fencing)."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123abcd."
  }
}

variable "subnet_ids" {
  description = "Private subnets, one per availability zone, for the coordinator Lambda. Their CIDRs join each cluster's agent API allow-list. They need a route to the DynamoDB, EC2, SSM, SNS and CloudWatch Logs APIs (NAT gateway or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "subnet_ids must list at least two subnets (subnet-...), so that a replica survives the loss of an availability zone."
  }
}

variable "lambda_zip_path" {
  description = "Path of the coordinator package built by scripts/lambda-zip (a zip with the `bootstrap` executable at its root)."
  type        = string

  validation {
    condition     = endswith(var.lambda_zip_path, ".zip")
    error_message = "lambda_zip_path must name a .zip file."
  }
}

variable "lambda_architecture" {
  description = "Architecture the coordinator zip was built for: x86_64 (scripts/lambda-zip default) or arm64 (scripts/lambda-zip --arm64)."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.lambda_architecture)
    error_message = "lambda_architecture must be x86_64 or arm64."
  }
}

variable "coordinator_timeout_seconds" {
  description = "Coordinator Lambda timeout. It must cover one full failover: a lease_duration of observation, fencing (EC2 stop, SSM, agent HTTP) and promotion."
  type        = number
  default     = 300

  validation {
    condition     = var.coordinator_timeout_seconds >= 120 && var.coordinator_timeout_seconds <= 900
    error_message = "coordinator_timeout_seconds must be from 120 (one failover) to 900 (the Lambda maximum)."
  }
}

variable "coordinator_memory_mb" {
  description = "Coordinator Lambda memory (MB); it needs little, CPU share grows with it."
  type        = number
  default     = 256

  validation {
    condition     = var.coordinator_memory_mb >= 128 && var.coordinator_memory_mb <= 10240
    error_message = "coordinator_memory_mb must be from 128 to 10240."
  }
}

variable "schedule_expression" {
  description = "EventBridge schedule of the coordinator's safety-net run. The fast path is the agents invoking it directly."
  type        = string
  default     = "rate(1 minute)"

  validation {
    condition     = can(regex("^(rate|cron)\\(.+\\)$", var.schedule_expression))
    error_message = "schedule_expression must be a rate(...) or cron(...) expression."
  }
}

variable "fencing" {
  description = "Fencing methods the coordinator tries in order before promoting: ec2 (StopInstances), ssm (RunCommand stopping Postgres), http (agent demote API)."
  type        = list(string)
  default     = ["ec2", "ssm", "http"]

  validation {
    condition     = length(var.fencing) > 0 && length(distinct(var.fencing)) == length(var.fencing) && alltrue([for f in var.fencing : contains(["ec2", "ssm", "http"], f)])
    error_message = "fencing must list distinct methods out of ec2, ssm and http (at least one; S3 fence-before-promote)."
  }
}

variable "log_retention_days" {
  description = "Retention of the coordinator's CloudWatch log group."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, ..., 365, ..., 3653)."
  }
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key for the table, the SNS topic and the log group. Null: the AWS-managed keys (aws/dynamodb, aws/sns)."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "deletion_protection" {
  description = "Protect the shared state table from deletion. Turn off only for throw-away clusters and tests."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "alarm_topic_arn" {
  description = "SNS topic the CloudWatch alarms notify (alarm and OK). Null: the alarms only change state (see infra/README.md, Metrics and alarms)."
  type        = string
  default     = null

  validation {
    condition     = var.alarm_topic_arn == null || can(regex("^arn:aws[a-z-]*:sns:", var.alarm_topic_arn))
    error_message = "alarm_topic_arn must be an SNS topic ARN."
  }
}
