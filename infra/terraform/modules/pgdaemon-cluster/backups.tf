# Continuous WAL archiving and base backups (var.backups, off by default). The agents run
# barman-cloud (barman-cli-cloud), which keeps everything of a cluster under
# s3://<bucket>/<prefix>/<cluster>/ (base/ for base backups, wals/ for WAL): the user data
# installs it and writes `[archive] destination = "s3://<bucket>/<prefix>"` into the agent's
# config (the agent appends the cluster name as barman's server name). The node role may read,
# write and delete under its own cluster's prefix only (nodes.tf). With bucket_name null the
# module creates the bucket here, after the artifact bucket's pattern (artifacts.tf).

locals {
  backups_enabled = var.backups.enabled
  create_backups  = local.backups_enabled && var.backups.bucket_name == null
  backup_bucket   = !local.backups_enabled ? "" : (local.create_backups ? aws_s3_bucket.backups[0].id : var.backups.bucket_name)
  backup_bucket_arn = !local.backups_enabled ? "" : (
    local.create_backups ? aws_s3_bucket.backups[0].arn : "arn:${local.partition}:s3:::${var.backups.bucket_name}"
  )
  # What the agent is given; barman's server name (the cluster) is appended by the agent.
  archive_destination = local.backups_enabled ? "s3://${local.backup_bucket}/${var.backups.prefix}" : ""
  # This cluster's keys: "<prefix>/<cluster>/" (the slash keeps cluster "main" out of "main-2").
  backup_cluster_prefix = "${var.backups.prefix}/${var.cluster_name}/"
  # Other clusters' backups these nodes may read (to restore from them), bucket and prefix
  # defaulting to this cluster's.
  backup_restore_sources = [for r in(local.backups_enabled ? var.backups.restore_from_clusters : []) : {
    bucket_arn = r.bucket_name == null ? local.backup_bucket_arn : "arn:${local.partition}:s3:::${r.bucket_name}"
    key_prefix = "${coalesce(r.prefix, var.backups.prefix)}/${r.cluster}/"
  }]
  # Bucket names are global and at most 63 characters; bucket_prefix at most 37 (26 go to the
  # unique suffix): 9 + 19 + 9.
  backups_bucket_prefix = "pgdaemon-${trimsuffix(substr(var.cluster_name, 0, 19), "-")}-backups-"
}

resource "aws_s3_bucket" "backups" {
  # checkov:skip=CKV_AWS_18:Only the cluster's nodes read and write here, each under its own cluster's prefix; CloudTrail data events record object access when wanted. An access-log bucket per cluster is left to the user.
  # checkov:skip=CKV_AWS_144:A copy in another region is the user's disaster-recovery choice (replication to a bucket of theirs, cross-account); the module keeps the backups in the cluster's region.
  # checkov:skip=CKV_AWS_145:SSE-S3 (AES-256) on purpose: the nodes write WAL with no kms grant and no KMS request per segment, and the AWS-managed aws/s3 key would add no access control (its key policy admits every principal of the account that S3 admits) while it cannot be shared with another account, which would block copying the backups to a backup account. Access is the bucket policy and the per-cluster IAM prefix.
  # checkov:skip=CKV2_AWS_62:Nothing reacts to a new WAL segment or backup: barman-cloud lists the bucket itself.
  count         = local.create_backups ? 1 : 0
  bucket_prefix = local.backups_bucket_prefix
  # The cluster's backups: a destroy keeps the bucket (and fails while it holds any) unless
  # force_destroy says otherwise (throw-away clusters, tests).
  force_destroy = var.backups.force_destroy
  tags          = local.tags
}

resource "aws_s3_bucket_public_access_block" "backups" {
  count                   = local.create_backups ? 1 : 0
  bucket                  = aws_s3_bucket.backups[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "backups" {
  count  = local.create_backups ? 1 : 0
  bucket = aws_s3_bucket.backups[0].id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

# Versioned: what barman's retention (or a compromised node: it has s3:DeleteObject, not
# s3:DeleteObjectVersion) deletes stays recoverable for noncurrent_days.
resource "aws_s3_bucket_versioning" "backups" {
  count  = local.create_backups ? 1 : 0
  bucket = aws_s3_bucket.backups[0].id
  versioning_configuration {
    status = "Enabled"
  }
}

# SSE-S3 (AES-256), not SSE-KMS: see the CKV_AWS_145 note on the bucket.
resource "aws_s3_bucket_server_side_encryption_configuration" "backups" {
  count  = local.create_backups ? 1 : 0
  bucket = aws_s3_bucket.backups[0].id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "backups" {
  count  = local.create_backups ? 1 : 0
  bucket = aws_s3_bucket.backups[0].id
  rule {
    id     = "noncurrent-versions"
    status = "Enabled"
    filter {}
    # No expiration of current objects: barman's retention policy decides which backups and WAL
    # go. What it deletes (and what is overwritten) is kept noncurrent_days, then expires.
    noncurrent_version_expiration {
      noncurrent_days = var.backups.noncurrent_days
    }
    # The delete markers left once their noncurrent versions have expired (they hold no data).
    expiration {
      expired_object_delete_marker = true
    }
    # Parts of an upload that failed (a base backup is a multipart upload) stop costing after a week.
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
  depends_on = [aws_s3_bucket_versioning.backups]
}

data "aws_iam_policy_document" "backups_bucket" {
  count = local.create_backups ? 1 : 0
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    resources = [aws_s3_bucket.backups[0].arn, "${aws_s3_bucket.backups[0].arn}/*"]
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "backups" {
  count  = local.create_backups ? 1 : 0
  bucket = aws_s3_bucket.backups[0].id
  policy = data.aws_iam_policy_document.backups_bucket[0].json
  # One change to the bucket's access settings at a time (concurrent ones can fail with
  # OperationAborted).
  depends_on = [aws_s3_bucket_public_access_block.backups]
}
