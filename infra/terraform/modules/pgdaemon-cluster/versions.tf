terraform {
  required_version = ">= 1.11.0" # write-only arguments and ephemeral resources (secrets.tf)

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.100, < 6.0" # write-only secret_string_wo, ephemeral random password
    }
  }
}
