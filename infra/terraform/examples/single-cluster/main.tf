# Example root: one pgdaemon cluster in an existing VPC.
#   scripts/lambda-zip --agent              # target/lambda/bootstrap.zip and target/lambda/pgdaemon-agent
#   terraform init && terraform apply -var-file=my.tfvars
# See infra/README.md for the variables and for pointing clients at the writer endpoint.

terraform {
  required_version = ">= 1.11.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.100"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      "app" = "pgdaemon"
    }
  }
}

module "cluster" {
  source = "../../modules/pgdaemon-cluster"

  cluster_name        = var.cluster_name
  vpc_id              = var.vpc_id
  subnet_ids          = var.subnet_ids
  node_count          = var.node_count
  ami_id              = var.ami_id
  agent_binary_path   = var.agent_binary_path
  lambda_zip_path     = var.lambda_zip_path
  client_cidr_blocks  = var.client_cidr_blocks
  deletion_protection = var.deletion_protection
  backups             = var.backups
}
