variable "cluster_name" {
  description = "Name of the Postgres cluster. It is the DynamoDB partition key of every state item, the value of the cluster tag on its instances, and part of every resource name."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", var.cluster_name))
    error_message = "cluster_name must be 3-32 characters of lower-case letters, digits and '-', starting with a letter and not ending with '-'."
  }
}

variable "fleet" {
  description = <<-EOT
    Fleet mode: the pgdaemon-fleet module's `fleet` output (one coordinator and one table for many clusters). Set, this module creates neither a table nor a coordinator: the agents use the fleet's table (their items in their own partition, as always, plus the registration item that puts the cluster in the fleet's index) and invoke the fleet's agent-evaluate alias; the fleet's coordinator may reach these nodes' agent API. The cluster's API token must be at the fleet's naming pattern (api_token_parameter with {cluster}). Null (default): the cluster's own table and coordinator (PGDAEMON_DISCOVERY = off).
  EOT
  type = object({
    table_name                    = string
    table_arn                     = string
    coordinator_function_name     = string
    coordinator_function_arn      = string
    coordinator_security_group_id = string
    coordinator_subnet_cidrs      = optional(list(string), [])
    vpc_id                        = optional(string)
    api_token_parameter           = optional(string, "/aws/reference/secretsmanager/pgdaemon/{cluster}/api-token")
    events_topic_arn              = optional(string)
  })
  default = null

  validation {
    condition = var.fleet == null || try(
      can(regex("^arn:aws[a-z-]*:dynamodb:", var.fleet.table_arn)) &&
      can(regex("^arn:aws[a-z-]*:lambda:[^:]+:[0-9]+:function:[^:]+$", var.fleet.coordinator_function_arn)) &&
      can(regex("^sg-[0-9a-f]+$", var.fleet.coordinator_security_group_id)),
      false
    )
    error_message = "fleet must be the pgdaemon-fleet module's fleet output: a table ARN, the coordinator's unqualified function ARN and its security group (sg-...)."
  }
}

variable "table_name" {
  description = "Name of the DynamoDB state table. Defaults to \"pgdaemon-<cluster_name>\". Ignored in fleet mode (the fleet's table)."
  type        = string
  default     = null

  validation {
    condition     = var.table_name == null || can(regex("^[A-Za-z0-9_.-]{3,255}$", var.table_name))
    error_message = "table_name must be 3-255 characters of letters, digits, '_', '-' and '.'."
  }
}

variable "cluster_tag_key" {
  description = "Tag key that marks an EC2 instance as a member of this cluster (value = cluster_name). The coordinator may stop, and send SSM commands to, only instances carrying it."
  type        = string
  default     = "pgdaemon:cluster"

  validation {
    condition     = length(var.cluster_tag_key) > 0 && length(var.cluster_tag_key) <= 128 && !startswith(lower(var.cluster_tag_key), "aws:")
    error_message = "cluster_tag_key must be 1-128 characters and must not start with the reserved prefix \"aws:\"."
  }
}

variable "vpc_id" {
  description = "VPC that holds the Postgres nodes, the coordinator Lambda and the internal NLB."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123abcd."
  }
}

variable "subnet_ids" {
  description = "Private subnets, one per availability zone, for the nodes, the coordinator Lambda and the NLB. They need a route to the DynamoDB, EC2, SSM, SNS and CloudWatch Logs APIs (NAT gateway or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) >= 2 && alltrue([for s in var.subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "subnet_ids must list at least two subnets (subnet-...), so that a replica survives the loss of an availability zone."
  }
}

variable "node_count" {
  description = "Number of Postgres nodes (one primary, the rest replicas). Odd numbers spread best over three zones."
  type        = number
  default     = 3

  validation {
    condition     = var.node_count >= 2 && var.node_count <= 9 && floor(var.node_count) == var.node_count
    error_message = "node_count must be a whole number from 2 to 9: failover needs at least one replica."
  }
}

variable "instance_type" {
  description = "EC2 instance type of the Postgres nodes. Its architecture must match ami_id and the agent binary."
  type        = string
  default     = "m6i.large"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "instance_type must look like m6i.large."
  }
}

variable "ami_id" {
  description = "AMI of the Postgres nodes. Defaults to the latest Amazon Linux 2023 for the architecture of agent_architecture (read from the public SSM parameter)."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null || can(regex("^ami-[0-9a-f]+$", var.ami_id))
    error_message = "ami_id must look like ami-0123abcd."
  }
}

variable "agent_architecture" {
  description = "CPU architecture of the nodes (and so of the agent binary and the default AMI): x86_64 or arm64."
  type        = string
  default     = "x86_64"

  validation {
    condition     = contains(["x86_64", "arm64"], var.agent_architecture)
    error_message = "agent_architecture must be x86_64 or arm64."
  }
}

variable "agent_binary_path" {
  description = "Local path of the pgdaemon-agent binary to deploy (scripts/lambda-zip --agent builds target/lambda/pgdaemon-agent). The module uploads it to the cluster's artifact bucket (encrypted, versioned, private) under its sha256; each node downloads it with its instance role and installs it only if the checksum matches. Null: no bucket; the binary must be in the AMI at /usr/local/bin/pgdaemon-agent."
  type        = string
  default     = null

  validation {
    condition     = var.agent_binary_path == null ? true : fileexists(var.agent_binary_path)
    error_message = "agent_binary_path must name an existing file (build it with scripts/lambda-zip --agent), or be null when the AMI holds the agent."
  }
}

variable "agent_binary_url" {
  description = "Removed: replaced by agent_binary_path (the module stores the binary in the cluster's bucket with its sha256; no expiring URL). Kept only to explain the change; must stay empty."
  type        = string
  default     = ""

  validation {
    condition     = var.agent_binary_url == ""
    error_message = "agent_binary_url was replaced by agent_binary_path: give the local path of the built agent and the module uploads it to the cluster's S3 bucket and checks its sha256 on every node."
  }
}

variable "replication_password_parameter" {
  description = "SSM SecureString holding the Postgres replication password, if you manage it yourself. Null (default): the module generates the password at deploy time into the Secrets Manager secret pgdaemon/<cluster_name>/replication-password, which the agents read through Parameter Store (/aws/reference/secretsmanager/...). The agents may read this one secret."
  type        = string
  default     = null

  validation {
    condition     = var.replication_password_parameter == null || (can(regex("^/[A-Za-z0-9_./-]+$", var.replication_password_parameter)) && try(length(var.replication_password_parameter) <= 1011, false))
    error_message = "replication_password_parameter must be an absolute SSM parameter name (starting with '/')."
  }
}

variable "rewind_password_parameter" {
  description = "SSM SecureString holding the password of the pg_rewind role (rewinder), if you manage it yourself. Null (default): generated at deploy time into the Secrets Manager secret pgdaemon/<cluster_name>/rewind-password."
  type        = string
  default     = null

  validation {
    condition     = var.rewind_password_parameter == null || (can(regex("^/[A-Za-z0-9_./-]+$", var.rewind_password_parameter)) && try(length(var.rewind_password_parameter) <= 1011, false))
    error_message = "rewind_password_parameter must be an absolute SSM parameter name (starting with '/')."
  }
}

variable "api_token_parameter" {
  description = "SSM SecureString holding the bearer token of the agents' HTTP API ([api] token_ssm_parameter), if you manage it yourself; the agents and the coordinator may read this one secret. Null (default): generated at deploy time into the Secrets Manager secret pgdaemon/<cluster_name>/api-token."
  type        = string
  default     = null

  validation {
    condition     = var.api_token_parameter == null || (can(regex("^/[A-Za-z0-9_./-]+$", var.api_token_parameter)) && try(length(var.api_token_parameter) <= 1011, false))
    error_message = "api_token_parameter must be an absolute SSM parameter name (starting with '/')."
  }
}

variable "admin_password_parameter" {
  description = "SSM SecureString holding the password of the cluster's administrator role (dbadmin: LOGIN, CREATEDB, CREATEROLE; created on the first primary), if you manage it yourself. Null (default): generated at deploy time into the Secrets Manager secret pgdaemon/<cluster_name>/admin-password."
  type        = string
  default     = null

  validation {
    condition     = var.admin_password_parameter == null || (can(regex("^/[A-Za-z0-9_./-]+$", var.admin_password_parameter)) && try(length(var.admin_password_parameter) <= 1011, false))
    error_message = "admin_password_parameter must be an absolute SSM parameter name (starting with '/')."
  }
}

variable "secret_recovery_window_days" {
  description = "Recovery window of the generated secrets when they are deleted (terraform destroy): 7-30 days, or 0 to delete at once. A secret waiting for deletion blocks a new cluster of the same name until then (aws secretsmanager restore-secret, or delete-secret --force-delete-without-recovery)."
  type        = number
  default     = 7

  validation {
    condition     = var.secret_recovery_window_days == 0 || (var.secret_recovery_window_days >= 7 && var.secret_recovery_window_days <= 30)
    error_message = "secret_recovery_window_days must be 0 or from 7 to 30."
  }
}

variable "client_networks" {
  description = "CIDR blocks pg_hba.conf admits client connections from (scram-sha-256, TLS). The NLB preserves the clients' source addresses for instance targets, so Postgres sees the clients' own networks, not the NLB's: list every network your applications connect from. Null (default): client_cidr_blocks plus the cluster subnets' CIDRs. Clients admitted by security group (client_security_group_ids) from elsewhere need their networks here."
  type        = list(string)
  default     = null

  validation {
    condition     = var.client_networks == null ? true : alltrue([for c in var.client_networks : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "client_networks must be valid CIDR blocks, and 0.0.0.0/0 is refused."
  }
}

variable "data_volume_size_gb" {
  description = "Size of each node's encrypted gp3 data volume (PGDATA), in GiB."
  type        = number
  default     = 100

  validation {
    condition     = var.data_volume_size_gb >= 10 && var.data_volume_size_gb <= 16384
    error_message = "data_volume_size_gb must be from 10 to 16384."
  }
}

variable "postgres_port" {
  description = "Port Postgres listens on, on every node; also the NLB's writer listener port."
  type        = number
  default     = 5432

  validation {
    condition     = var.postgres_port > 1023 && var.postgres_port < 65536
    error_message = "postgres_port must be an unprivileged port (1024-65535)."
  }
}

variable "reader_port" {
  description = "NLB listener port that balances over the healthy replicas."
  type        = number
  default     = 5433

  validation {
    condition     = var.reader_port > 1023 && var.reader_port < 65536
    error_message = "reader_port must be an unprivileged port (1024-65535)."
  }
}

variable "agent_api_port" {
  description = "Port of the agent's HTTP API (Patroni-compatible /primary, /replica, /health)."
  type        = number
  default     = 8008

  validation {
    condition     = var.agent_api_port > 1023 && var.agent_api_port < 65536
    error_message = "agent_api_port must be an unprivileged port (1024-65535)."
  }
}

variable "client_cidr_blocks" {
  description = "CIDR blocks of the clients allowed to reach the NLB listeners. Nothing else may reach the nodes' Postgres port."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for c in var.client_cidr_blocks : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "client_cidr_blocks must be valid CIDR blocks, and 0.0.0.0/0 is refused: the endpoint is internal."
  }
}

variable "client_security_group_ids" {
  description = "Security groups of the clients allowed to reach the NLB listeners."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for s in var.client_security_group_ids : can(regex("^sg-[0-9a-f]+$", s))])
    error_message = "client_security_group_ids must look like sg-0123abcd."
  }
}

variable "lambda_zip_path" {
  description = "Path of the coordinator package built by scripts/lambda-zip (a zip with the `bootstrap` executable at its root). Required unless fleet is set (then the fleet's coordinator serves the cluster)."
  type        = string
  default     = null

  validation {
    condition     = var.lambda_zip_path == null ? var.fleet != null : endswith(var.lambda_zip_path, ".zip")
    error_message = "lambda_zip_path must name a .zip file (it may be left out only in fleet mode)."
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
  description = "Customer-managed KMS key for the table, the SNS topic, the log group and the EBS volumes. Null: the AWS-managed keys (aws/dynamodb, aws/sns, aws/ebs)."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:", var.kms_key_arn))
    error_message = "kms_key_arn must be a KMS key ARN."
  }
}

variable "deletion_protection" {
  description = "Protect the state table and the NLB from deletion. Turn off only for throw-away clusters and tests."
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

variable "backups" {
  description = <<-EOT
    Continuous WAL archiving and base backups with barman-cloud, in S3 (infra/README.md, "Backups bucket"). Off by default. With enabled = true every node installs barman-cloud (barman-cli-cloud) and its agent gets `[archive] destination = "s3://<bucket>/<prefix>"`; barman keeps the cluster's backups under <prefix>/<cluster_name>/ (base/ and wals/), and the node role may read, write and delete there only.
    - bucket_name: an existing bucket to use (yours to configure: encryption, versioning, TLS-only policy); null (default) creates one for this cluster (SSE-S3, versioned, private, TLS only, lifecycle below).
    - prefix: key prefix before the cluster name (default "pgdaemon"); letters, digits, '.', '_', '-', separated by '/'.
    - noncurrent_days: the created bucket keeps replaced and deleted objects (barman's retention deletes, a compromised node's deletes) this many days before they expire (default 30). Current objects never expire: barman's retention policy deletes backups and WAL itself.
    - force_destroy: terraform destroy also deletes the created bucket with every backup in it (default false: the destroy fails on a bucket that holds backups). For throw-away clusters and tests only.
    - restore_from_clusters: other clusters whose backups these nodes may read (GetObject and ListBucket under <prefix>/<cluster>/ only: barman-cloud-restore and barman-cloud-wal-restore to make this cluster from theirs); bucket_name and prefix default to this cluster's.
  EOT
  type = object({
    enabled         = bool
    bucket_name     = optional(string)
    prefix          = optional(string, "pgdaemon")
    noncurrent_days = optional(number, 30)
    force_destroy   = optional(bool, false)
    restore_from_clusters = optional(list(object({
      cluster     = string
      bucket_name = optional(string)
      prefix      = optional(string)
    })), [])
  })
  default  = { enabled = false }
  nullable = false

  validation {
    condition     = var.backups.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.backups.bucket_name))
    error_message = "backups.bucket_name must be an S3 bucket name (3-63 lower-case letters, digits, '.' and '-'), or null to create one."
  }
  validation {
    # Also what keeps the IAM patterns exact: no '*' or '?' in a prefix.
    condition     = can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", var.backups.prefix)) && length(var.backups.prefix) <= 200
    error_message = "backups.prefix must be path segments of letters, digits, '.', '_' and '-' separated by single '/', without a leading or trailing '/' (at most 200 characters)."
  }
  validation {
    condition     = var.backups.noncurrent_days >= 1 && floor(var.backups.noncurrent_days) == var.backups.noncurrent_days
    error_message = "backups.noncurrent_days must be a whole number of days, at least 1."
  }
  validation {
    condition = alltrue([for r in var.backups.restore_from_clusters :
      can(regex("^[a-z][a-z0-9-]{1,30}[a-z0-9]$", r.cluster)) &&
      (r.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", r.bucket_name))) &&
      (r.prefix == null || can(regex("^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$", r.prefix)))
    ])
    error_message = "backups.restore_from_clusters: each cluster must be a cluster name (as cluster_name), bucket_name an S3 bucket name, prefix as backups.prefix."
  }
  validation {
    condition = !anytrue([for r in var.backups.restore_from_clusters :
      r.cluster == var.cluster_name && coalesce(r.prefix, var.backups.prefix) == var.backups.prefix && (r.bucket_name == null || r.bucket_name == var.backups.bucket_name)
    ])
    error_message = "backups.restore_from_clusters must not name this cluster in its own bucket and prefix: it may read and write there already."
  }
}
