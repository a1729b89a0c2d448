# Example root: fleet mode. One coordinator Lambda and one state table (modules/pgdaemon-fleet)
# serve several pgdaemon clusters (modules/pgdaemon-cluster with `fleet`), all in one VPC.
#   scripts/lambda-zip --agent              # target/lambda/bootstrap.zip and target/lambda/pgdaemon-agent
#   terraform init && terraform apply -var-file=my.tfvars
# See infra/README.md, "Fleet mode". A cluster added to cluster_names joins the fleet by itself:
# its agents register it in the table, and the coordinator's next scheduled run evaluates it.

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

module "fleet" {
  source = "../../modules/pgdaemon-fleet"

  name                = var.fleet_name
  vpc_id              = var.vpc_id
  subnet_ids          = var.subnet_ids
  lambda_zip_path     = var.lambda_zip_path
  deletion_protection = var.deletion_protection
}

module "cluster" {
  source   = "../../modules/pgdaemon-cluster"
  for_each = toset(var.cluster_names)

  cluster_name                = each.key
  fleet                       = module.fleet.fleet
  vpc_id                      = var.vpc_id
  subnet_ids                  = var.subnet_ids
  node_count                  = var.node_count
  ami_id                      = var.ami_id
  agent_binary_path           = var.agent_binary_path
  client_cidr_blocks          = var.client_cidr_blocks
  deletion_protection         = var.deletion_protection
  secret_recovery_window_days = var.secret_recovery_window_days
  backups                     = var.backups
}
