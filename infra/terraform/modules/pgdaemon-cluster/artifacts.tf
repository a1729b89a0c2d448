# The agent binary, stored by the deployment in the cluster's own bucket under its sha256 and
# fetched by every node with its instance role (no URL that expires: an instance the Auto
# Scaling group starts months later finds the same object). The user data installs it only if
# its sha256 is the one computed here. No bucket when agent_binary_path is null (the AMI holds
# the agent).

locals {
  upload_agent = var.agent_binary_path != null
  agent_sha256 = local.upload_agent ? filesha256(var.agent_binary_path) : ""
  # Content-addressed: a new build is a new object, and each launch template version names
  # exactly the bytes its checksum describes.
  agent_key = local.upload_agent ? "agent/${local.agent_sha256}/pgdaemon-agent" : ""
  # Bucket names are global and at most 63 characters: a readable prefix and a unique suffix.
  artifacts_bucket_prefix = "pgdaemon-${substr(var.cluster_name, 0, 24)}-artifacts-"
}

resource "aws_s3_bucket" "artifacts" {
  # checkov:skip=CKV_AWS_18:Holds only build artifacts the deployment writes; reads are by the node role alone and CloudTrail records them. An access-log bucket per cluster is left to the user.
  # checkov:skip=CKV_AWS_144:The artifact is re-uploaded by any deployment; a copy in another region has nothing to recover.
  # checkov:skip=CKV_AWS_145:SSE-S3 (AES-256): the nodes read the object with no kms grant; the bucket is private and the object is verified by its sha256 anyway.
  # checkov:skip=CKV2_AWS_62:Nothing reacts to a new artifact: the deployment that uploads it also updates the launch template.
  count         = local.upload_agent ? 1 : 0
  bucket_prefix = local.artifacts_bucket_prefix
  # Only build artifacts: a destroy removes them (they are rebuilt from the repository).
  force_destroy = true
  tags          = local.tags
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  count                   = local.upload_agent ? 1 : 0
  bucket                  = aws_s3_bucket.artifacts[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "artifacts" {
  count  = local.upload_agent ? 1 : 0
  bucket = aws_s3_bucket.artifacts[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "artifacts" {
  count  = local.upload_agent ? 1 : 0
  bucket = aws_s3_bucket.artifacts[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  count  = local.upload_agent ? 1 : 0
  bucket = aws_s3_bucket.artifacts[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  count  = local.upload_agent ? 1 : 0
  bucket = aws_s3_bucket.artifacts[0].id
  rule {
    id     = "old-builds"
    status = "Enabled"
    filter {}
    # Replaced builds stay readable for a month (an old launch template version still names them).
    noncurrent_version_expiration {
      noncurrent_days = 30
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
  depends_on = [aws_s3_bucket_versioning.artifacts]
}

resource "aws_s3_object" "agent" {
  count       = local.upload_agent ? 1 : 0
  bucket      = aws_s3_bucket.artifacts[0].id
  key         = local.agent_key
  source      = var.agent_binary_path
  source_hash = local.agent_sha256
  # The checksum the nodes verify, also on the object for whoever inspects the bucket.
  metadata = {
    sha256 = local.agent_sha256
  }
  tags       = local.tags
  depends_on = [aws_s3_bucket_server_side_encryption_configuration.artifacts, aws_s3_bucket_versioning.artifacts]
}
