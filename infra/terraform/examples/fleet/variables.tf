variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "eu-west-1"
}

variable "fleet_name" {
  description = "Name of the fleet (pgdaemon-<name>-coordinator, table pgdaemon-<name>)."
  type        = string
  default     = "fleet"
}

variable "cluster_names" {
  description = "The clusters of the fleet, one pgdaemon-cluster module each."
  type        = list(string)
  default     = ["orders", "billing"]
}

variable "vpc_id" {
  description = "Existing VPC for the coordinator and every cluster."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of that VPC, one per availability zone (at least two)."
  type        = list(string)
}

variable "node_count" {
  description = "Number of Postgres nodes of each cluster."
  type        = number
  default     = 2
}

variable "ami_id" {
  description = "AMI of the nodes; null for the latest Amazon Linux 2023."
  type        = string
  default     = null
}

variable "agent_binary_path" {
  description = "Local path of the built pgdaemon-agent (scripts/lambda-zip --agent), uploaded to each cluster's bucket; null when baked into the AMI."
  type        = string
  default     = null
}

variable "lambda_zip_path" {
  description = "Coordinator package built by scripts/lambda-zip."
  type        = string
  default     = "../../../../target/lambda/bootstrap.zip"
}

variable "client_cidr_blocks" {
  description = "Networks of the Postgres clients allowed to reach the clusters' NLBs."
  type        = list(string)
  default     = ["10.0.0.0/8"]
}

variable "deletion_protection" {
  description = "Protect the table and the NLBs from deletion."
  type        = bool
  default     = true
}

variable "secret_recovery_window_days" {
  description = "Recovery window of the clusters' generated secrets on destroy (0: delete at once)."
  type        = number
  default     = 7
}

variable "backups" {
  description = "WAL archive and base backups with barman-cloud in S3, for every cluster (the cluster module's variable; infra/README.md, \"Backups bucket\"). Off by default. Without bucket_name each cluster gets a bucket of its own; with it they share that bucket, each confined to <prefix>/<its name>/. Attributes left out take the module's defaults."
  type = object({
    enabled         = bool
    bucket_name     = optional(string)
    prefix          = optional(string)
    noncurrent_days = optional(number)
    force_destroy   = optional(bool)
    restore_from_clusters = optional(list(object({
      cluster     = string
      bucket_name = optional(string)
      prefix      = optional(string)
    })))
  })
  default = { enabled = false }
}
