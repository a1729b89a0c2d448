# The cluster state (DESIGN.md section 2): every item of a cluster shares the partition key
# `cluster` = cluster name, so IAM can confine a principal to one cluster with
# dynamodb:LeadingKeys.
resource "aws_dynamodb_table" "state" {
  name                        = local.table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "cluster"
  range_key                   = "item"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "cluster"
    type = "S"
  }

  attribute {
    name = "item"
    type = "S"
  }

  # Only garbage-collects dead member records; DynamoDB deletes "typically within two days",
  # so expiry is never read as evidence of liveness.
  ttl {
    attribute_name = "expire_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  tags = local.tags
}
