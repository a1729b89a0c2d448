variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "eu-west-1"
}

variable "cluster_name" {
  description = "Name of the Postgres cluster (see the module's variable)."
  type        = string
  default     = "main"
}

variable "vpc_id" {
  description = "Existing VPC for the cluster."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of that VPC, one per availability zone (at least two)."
  type        = list(string)
}

variable "node_count" {
  description = "Number of Postgres nodes."
  type        = number
  default     = 3
}

variable "ami_id" {
  description = "AMI of the nodes; null for the latest Amazon Linux 2023."
  type        = string
  default     = null
}

variable "agent_binary_path" {
  description = "Local path of the built pgdaemon-agent (scripts/lambda-zip --agent: target/lambda/pgdaemon-agent), uploaded to the cluster's bucket; null when baked into the AMI."
  type        = string
  default     = null
}

variable "lambda_zip_path" {
  description = "Coordinator package built by scripts/lambda-zip."
  type        = string
  default     = "../../../../target/lambda/bootstrap.zip"
}

variable "client_cidr_blocks" {
  description = "Networks of the Postgres clients allowed to reach the NLB."
  type        = list(string)
  default     = ["10.0.0.0/8"]
}

variable "deletion_protection" {
  description = "Protect the table and the NLB from deletion."
  type        = bool
  default     = true
}

variable "backups" {
  description = "WAL archive and base backups with barman-cloud in S3 (the module's variable; infra/README.md, \"Backups bucket\"). Off by default; { enabled = true } creates a bucket for the cluster. Attributes left out take the module's defaults."
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
