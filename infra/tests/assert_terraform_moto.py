#!/usr/bin/env python3
"""Asserts what `terraform apply` of infra/terraform/examples/single-cluster created in moto.

Queries moto with the real AWS APIs (boto3), checks the properties the issue promises (table key
schema, Lambda runtime and concurrency, schedule, IAM conditions, NLB health checks, security
groups), and writes the IAM policy documents it read (inline and attached managed ones) to
--policies-out, for the IAM simulation in infra/cdk/test (the same simulator judges both stacks).

Usage: assert_terraform_moto.py --endpoint URL --region R --cluster NAME --tag-key KEY --policies-out FILE [--backups JSON]
--backups is the example's `backups` input as applied (JSON); without it, backups must be off.
Exits non-zero on the first failed group, printing every failed assertion of that group.
"""
import argparse
import base64
import hashlib
import json
import pathlib
import re
import sys
import urllib.parse

import boto3
from botocore.exceptions import ClientError

FAILURES: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("  ok   " if cond else "  FAIL ") + what)
    if not cond:
        FAILURES.append(what)


def as_list(v):
    return v if isinstance(v, list) else [v]


def statements(doc):
    return as_list(doc["Statement"])


def action_matches(pattern: str, action: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(action.lower(), pattern.lower())


def expect_destroyed(client, prefix: str) -> int:
    print("Nothing left after destroy")
    check(prefix not in client("dynamodb").list_tables()["TableNames"], "table deleted")
    check(not [f for f in client("lambda").list_functions()["Functions"] if f["FunctionName"].startswith(prefix)], "function deleted")
    check(not [r for r in client("iam").list_roles()["Roles"] if r["RoleName"].startswith(prefix)], "roles deleted")
    check(not client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"], "Auto Scaling group deleted")
    check(not client("elbv2").describe_load_balancers()["LoadBalancers"], "NLB deleted")
    check(not client("events").list_rules(NamePrefix=prefix)["Rules"], "schedule deleted")
    check(not [b for b in client("s3").list_buckets()["Buckets"] if b["Name"].startswith(f"{prefix}-artifacts-")], "artifact bucket deleted")
    check(not [b for b in client("s3").list_buckets()["Buckets"] if b["Name"].startswith(f"{prefix}-backups-")], "backup bucket deleted (force_destroy)")
    secrets = client("secretsmanager").list_secrets(Filters=[{"Key": "name", "Values": [f"pgdaemon/{prefix.removeprefix('pgdaemon-')}/"]}])["SecretList"]
    check(not [x for x in secrets if not x.get("DeletedDate")], f"generated secrets deleted: {[x['Name'] for x in secrets if not x.get('DeletedDate')]}")
    check(not client("cloudwatch").describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"], "alarms deleted")
    check(not [d for d in client("cloudwatch").list_dashboards()["DashboardEntries"] if d["DashboardName"] == prefix], "dashboard deleted")
    print(f"{len(FAILURES)} failed")
    return 1 if FAILURES else 0


# The alarms and dashboard both stacks create (infra/terraform/modules/pgdaemon-cluster/templates).
SPECS = pathlib.Path(__file__).resolve().parents[1] / "terraform/modules/pgdaemon-cluster/templates"


def check_fleet_index(table) -> None:
    """The fleet index every table has (the registry: one item per cluster carries `fleet`)."""
    gsis = {g["IndexName"]: g for g in table.get("GlobalSecondaryIndexes", [])}
    g = gsis.get("fleet", {})
    keys = [(k["AttributeName"], k["KeyType"]) for k in g.get("KeySchema", [])]
    check(list(gsis) == ["fleet"], f"one global secondary index, fleet: {list(gsis)}")
    check(keys == [("fleet", "HASH"), ("cluster", "RANGE")], f"fleet index keys fleet/cluster: {keys}")
    check(g.get("Projection", {}).get("ProjectionType") == "KEYS_ONLY", f"fleet index projects keys only: {g.get('Projection')}")


def check_alarms_and_dashboard(client, prefix: str, cluster: str, fn_name: str) -> None:
    print("CloudWatch alarms and dashboard")
    cw = client("cloudwatch")
    specs = json.loads((SPECS / "alarms.json").read_text())
    alarms = {x["AlarmName"]: x for x in cw.describe_alarms(AlarmNamePrefix=f"{prefix}-")["MetricAlarms"]}
    check(sorted(alarms) == sorted(f"{prefix}-{s['id']}" for s in specs), f"one alarm per spec: {sorted(alarms)}")
    for spec in specs:
        x = alarms.get(f"{prefix}-{spec['id']}")
        if x is None:
            continue
        dims = {d["Name"]: d["Value"] for d in x.get("Dimensions", [])}
        want_dims = {"Cluster": cluster} if spec["dimension"] == "cluster" else {"FunctionName": fn_name}
        got = (x["Namespace"], x["MetricName"], x["Statistic"], x["Period"], x["EvaluationPeriods"],
               x.get("DatapointsToAlarm"), float(x["Threshold"]), x["ComparisonOperator"], x.get("TreatMissingData"), dims)
        want = (spec["namespace"], spec["metric"], spec["statistic"], spec["period"], spec["evaluation_periods"],
                spec["datapoints_to_alarm"], float(spec["threshold"]), spec["comparison"], spec["treat_missing_data"], want_dims)
        check(got == want, f"alarm {spec['id']}: {got}, want {want}")
        check(cluster in x.get("AlarmDescription", "") and "${" not in x.get("AlarmDescription", ""), f"alarm {spec['id']} describes itself for {cluster}")
        check(x.get("AlarmActions", []) == [], f"alarm {spec['id']}: no actions without alarm_topic_arn: {x.get('AlarmActions')}")
    body = json.loads(cw.get_dashboard(DashboardName=prefix)["DashboardBody"])
    series = [m for w in body["widgets"] for m in w["properties"].get("metrics", [])]
    named = {(m[0], m[1]) for m in series}
    for spec in specs:
        check((spec["namespace"], spec["metric"]) in named, f"dashboard shows {spec['namespace']} {spec['metric']}")
    check(all(m[3] in (cluster, fn_name) for m in series), "dashboard series are this cluster's and its coordinator's")
    check("${" not in json.dumps(body), "dashboard template fully rendered")


def check_backup_bucket(s3, bucket: str, noncurrent_days: int) -> None:
    """The bucket the module creates for the WAL archive and base backups (backups.tf)."""
    enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    check([r["ApplyServerSideEncryptionByDefault"] for r in enc] == [{"SSEAlgorithm": "AES256"}], f"backup bucket: SSE-S3 by default: {enc}")
    check(s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled", "backup bucket versioned")
    pab = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    check(all(pab.get(k) for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")), f"backup bucket: public access blocked: {pab}")
    own = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    check(own == [{"ObjectOwnership": "BucketOwnerEnforced"}], f"backup bucket: owner enforced (no ACLs): {own}")
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    enabled = [r for r in rules if r["Status"] == "Enabled"]
    whole = [r for r in enabled if r.get("Filter", {}).get("Prefix", "") == "" and set(r.get("Filter", {})) <= {"Prefix"}]
    check(any(r.get("NoncurrentVersionExpiration", {}).get("NoncurrentDays") == noncurrent_days for r in whole),
          f"backup bucket: noncurrent versions expire after {noncurrent_days} days, bucket-wide: {[r.get('NoncurrentVersionExpiration') for r in rules]}")
    check(any(r.get("AbortIncompleteMultipartUpload", {}).get("DaysAfterInitiation") == 7 for r in whole),
          f"backup bucket: incomplete multipart uploads aborted after 7 days: {[r.get('AbortIncompleteMultipartUpload') for r in rules]}")
    # barman's retention deletes backups and WAL itself: no rule may expire a current object.
    check(all(set(r.get("Expiration", {})) <= {"ExpiredObjectDeleteMarker"} and "Transitions" not in r for r in rules),
          f"backup bucket: no current object expires or moves (only expired delete markers go): {[r.get('Expiration') for r in rules]}")
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    arn = f"arn:aws:s3:::{bucket}"
    deny = [x for x in statements(policy) if x["Effect"] == "Deny"
            and x.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") in ("false", ["false"])]
    check(len(deny) == 1 and as_list(deny[0]["Action"]) == ["s3:*"] and x_principal_all(deny[0])
          and sorted(as_list(deny[0]["Resource"])) == sorted([arn, f"{arn}/*"]),
          f"backup bucket policy denies every request without TLS (aws:SecureTransport false): {policy}")
    check(all(x["Effect"] == "Deny" for x in statements(policy)), "backup bucket policy grants nothing (the node role's IAM policy does)")


def x_principal_all(stmt) -> bool:
    p = stmt.get("Principal")
    return p == "*" or p == {"AWS": "*"} or p == {"AWS": ["*"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--region", required=True)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--tag-key", required=True)
    ap.add_argument("--policies-out")
    ap.add_argument(
        "--managed-policies",
        default="infra/cdk/test/aws-managed-policies.json",
        help="AWS managed policy documents the CDK simulation embeds; checked against moto's copy",
    )
    ap.add_argument("--user-data-out", help="write the nodes' decoded user data here")
    ap.add_argument("--agent-binary", help="the agent binary the apply uploaded (its sha256 must be the object's and the user data's)")
    ap.add_argument("--expect-destroyed", action="store_true", help="check that destroy left nothing behind")
    ap.add_argument("--backups", help="the example's backups input as applied (JSON); absent: backups off")
    a = ap.parse_args()

    def client(name):
        return boto3.client(
            name,
            endpoint_url=a.endpoint,
            region_name=a.region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    prefix = f"pgdaemon-{a.cluster}"
    tag = f"aws:ResourceTag/{a.tag_key}"

    if a.expect_destroyed:
        return expect_destroyed(client, prefix)
    if not a.policies_out:
        ap.error("--policies-out is required")
    backups = json.loads(a.backups) if a.backups else {"enabled": False}

    print("DynamoDB table")
    ddb = client("dynamodb")
    table = ddb.describe_table(TableName=prefix)["Table"]
    keys = {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]}
    types = {d["AttributeName"]: d["AttributeType"] for d in table["AttributeDefinitions"]}
    check(keys == {"cluster": "HASH", "item": "RANGE"}, f"key schema cluster/item: {keys}")
    check(types == {"cluster": "S", "item": "S", "fleet": "S"}, f"attribute types S (cluster, item, and the fleet index's fleet): {types}")
    check_fleet_index(table)
    check(table.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST", "on-demand billing")
    check(table.get("SSEDescription", {}).get("Status") == "ENABLED", f"encryption: {table.get('SSEDescription')}")
    ttl = ddb.describe_time_to_live(TableName=prefix)["TimeToLiveDescription"]
    check(ttl.get("AttributeName") == "expire_at" and ttl.get("TimeToLiveStatus") == "ENABLED", f"TTL on expire_at: {ttl}")
    pitr = ddb.describe_continuous_backups(TableName=prefix)["ContinuousBackupsDescription"]
    check(pitr["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED", "point-in-time recovery")

    print("SNS topic")
    sns = client("sns")
    topics = [t["TopicArn"] for t in sns.list_topics()["Topics"] if t["TopicArn"].endswith(f":{prefix}-events")]
    check(len(topics) == 1, f"events topic: {topics}")
    topic_arn = topics[0] if topics else ""
    if topic_arn:
        attrs = sns.get_topic_attributes(TopicArn=topic_arn)["Attributes"]
        check(bool(attrs.get("KmsMasterKeyId")), f"topic encrypted: {attrs.get('KmsMasterKeyId')}")

    print("Coordinator Lambda")
    lam = client("lambda")
    fn_name = f"{prefix}-coordinator"
    fn = lam.get_function(FunctionName=fn_name)["Configuration"]
    check(fn["Runtime"] == "provided.al2023", f"runtime provided.al2023: {fn['Runtime']}")
    check(fn["Handler"] == "bootstrap", "handler bootstrap")
    check(fn["Timeout"] >= 120, f"timeout covers one failover (>= 120 s): {fn['Timeout']}")
    check(fn.get("Architectures") in (["x86_64"], ["arm64"]), f"architecture: {fn.get('Architectures')}")
    env = fn.get("Environment", {}).get("Variables", {})
    check(env.get("PGDAEMON_TABLE") == prefix, f"PGDAEMON_TABLE: {env.get('PGDAEMON_TABLE')}")
    check(env.get("PGDAEMON_CLUSTERS") == a.cluster, f"PGDAEMON_CLUSTERS: {env.get('PGDAEMON_CLUSTERS')}")
    check(env.get("PGDAEMON_DISCOVERY") == "off", f"PGDAEMON_DISCOVERY off (a per-cluster coordinator): {env.get('PGDAEMON_DISCOVERY')}")
    check("PGDAEMON_CLUSTERS_PER_INVOCATION" not in env, "no fleet sharding for a per-cluster coordinator")
    check(env.get("PGDAEMON_FENCING") == "ec2,ssm,http", f"PGDAEMON_FENCING: {env.get('PGDAEMON_FENCING')}")
    check(env.get("PGDAEMON_SNS_TOPIC_ARN") == topic_arn, "PGDAEMON_SNS_TOPIC_ARN is the events topic")
    check(env.get("PGDAEMON_CLUSTER_TAG_KEY") == a.tag_key, f"PGDAEMON_CLUSTER_TAG_KEY: {env.get('PGDAEMON_CLUSTER_TAG_KEY')}")
    # Generated at deploy time (Secrets Manager), read through Parameter Store's reference.
    ref = f"/aws/reference/secretsmanager/pgdaemon/{a.cluster}"
    token_param = f"{ref}/api-token"
    check(env.get("PGDAEMON_API_TOKEN_PARAMETER") == token_param, f"PGDAEMON_API_TOKEN_PARAMETER (the agents' API token): {env.get('PGDAEMON_API_TOKEN_PARAMETER')}")
    check(env.get("PGDAEMON_RUN_BUDGET_MS") == str((fn["Timeout"] - 30) * 1000), f"PGDAEMON_RUN_BUDGET_MS below the timeout: {env.get('PGDAEMON_RUN_BUDGET_MS')}")
    check(len(fn.get("VpcConfig", {}).get("SubnetIds", [])) >= 2, "runs in the VPC (reaches the agents)")
    conc = lam.get_function_concurrency(FunctionName=fn_name).get("ReservedConcurrentExecutions")
    check(conc == 1, f"reserved concurrency 1 (runs never overlap): {conc}")
    fn_arn = fn["FunctionArn"]
    check_alarms_and_dashboard(client, prefix, a.cluster, fn_name)

    print("EventBridge schedule")
    ev = client("events")
    rule = ev.describe_rule(Name=f"{prefix}-coordinator-schedule")
    check(rule["ScheduleExpression"] == "rate(1 minute)", f"schedule: {rule['ScheduleExpression']}")
    check(rule["State"] == "ENABLED", "rule enabled")
    targets = ev.list_targets_by_rule(Rule=rule["Name"])["Targets"]
    check([t["Arn"] for t in targets] == [fn_arn], "the rule targets the coordinator")
    perm = json.loads(lam.get_policy(FunctionName=fn_name)["Policy"])
    check(
        any(
            s.get("Principal", {}).get("Service") == "events.amazonaws.com"
            and s.get("Condition", {}).get("ArnLike", {}).get("AWS:SourceArn") == rule["Arn"]
            for s in perm["Statement"]
        ),
        "EventBridge may invoke it, from this rule only",
    )

    print("IAM: coordinator role")
    iam = client("iam")

    def managed_document(arn):
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        doc = iam.get_policy_version(PolicyArn=arn, VersionId=version)["PolicyVersion"]["Document"]
        return json.loads(urllib.parse.unquote(doc)) if isinstance(doc, str) else doc

    def role_policies(role):
        """Inline documents, attached policy ARNs, and every document (inline + attached): a
        role's managed policies grant as much as its inline ones, so the simulation gets both."""
        docs = [iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"] for n in iam.list_role_policies(RoleName=role)["PolicyNames"]]
        attached = [p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]]
        return docs, attached, docs + [managed_document(arn) for arn in attached]

    # The AWS managed documents the CDK half of the simulation embeds must be AWS's (moto's copy).
    fixture = json.load(open(a.managed_policies))["policies"]
    for arn, p in fixture.items():
        check(managed_document(arn) == p["document"], f"{a.managed_policies}: {arn.split('/')[-1]} matches moto's copy")

    coord_docs, coord_attached, coord_all = role_policies(f"{prefix}-coordinator")
    coord_stmts = [s for d in coord_docs for s in statements(d)]
    stop = [s for s in coord_stmts if s["Effect"] == "Allow" and any(action_matches(p, "ec2:StopInstances") for p in as_list(s["Action"]))]
    check(len(stop) == 1, f"exactly one statement allows ec2:StopInstances: {len(stop)}")
    for s in stop:
        cond = s.get("Condition", {}).get("StringEquals", {}).get(tag)
        check(as_list(cond) == [a.cluster], f"StopInstances requires {tag} = {a.cluster}: {s.get('Condition')}")
        check(all(r.startswith("arn:aws:ec2:") and ":instance/" in r for r in as_list(s["Resource"])), "StopInstances only on instance ARNs")
    send = [s for s in coord_stmts if any(action_matches(p, "ssm:SendCommand") for p in as_list(s["Action"]))]
    for s in send:
        res = as_list(s["Resource"])
        if any(":instance/" in r or r == "*" for r in res):
            check(as_list(s.get("Condition", {}).get("StringEquals", {}).get(tag)) == [a.cluster], "SendCommand on instances requires the cluster tag")
        else:
            check(all(":document/" in r for r in res), f"SendCommand otherwise only on documents: {res}")
    ddb_stmts = [s for s in coord_stmts if any(p.startswith("dynamodb:") and p != "dynamodb:DescribeTable" for p in as_list(s["Action"]))]
    check(all(as_list(s["Resource"]) == [table["TableArn"]] for s in ddb_stmts), "DynamoDB access only on its table")
    check(
        all(as_list(s.get("Condition", {}).get("ForAllValues:StringEquals", {}).get("dynamodb:LeadingKeys")) == [a.cluster] for s in ddb_stmts),
        "DynamoDB item access only to this cluster's items (LeadingKeys)",
    )
    check(not any(as_list(s["Action"]) in (["*"], ["ec2:*"], ["ssm:*"]) for s in coord_stmts), "no wildcard service access")
    param_arn = f"arn:aws:ssm:{a.region}:{fn_arn.split(':')[4]}:parameter"
    coord_params = [s for s in coord_stmts if any(x.startswith("ssm:GetParameter") for x in as_list(s["Action"]))]
    check(
        len(coord_params) == 1 and as_list(coord_params[0]["Action"]) == ["ssm:GetParameter"]
        and as_list(coord_params[0]["Resource"]) == [f"{param_arn}{token_param}"],
        f"the coordinator reads only the API token parameter: {[(s['Action'], s['Resource']) for s in coord_params]}",
    )

    print("Generated secrets (Secrets Manager, read through Parameter Store)")
    sm, ssm = client("secretsmanager"), client("ssm")
    purposes = ["admin-password", "api-token", "replication-password", "rewind-password"]
    secret_arns = {}
    for purpose in purposes:
        try:
            secret = sm.describe_secret(SecretId=f"pgdaemon/{a.cluster}/{purpose}")
            secret_arns[purpose] = secret["ARN"]
            value = ssm.get_parameter(Name=f"{ref}/{purpose}", WithDecryption=True)["Parameter"]["Value"]
            check(len(value) >= 32 and value.isalnum(), f"{purpose}: generated ({len(value)} letters and digits), readable as {ref}/{purpose}")
        except ClientError as e:
            check(False, f"{purpose}: no generated secret pgdaemon/{a.cluster}/{purpose}: {e}")
    coord_sm = [s for s in coord_stmts if any(x.startswith("secretsmanager:") for x in as_list(s["Action"]))]
    check(
        [(as_list(s["Action"]), as_list(s["Resource"])) for s in coord_sm] == [(["secretsmanager:GetSecretValue"], [secret_arns.get("api-token")])],
        f"the coordinator reads only the API token's secret: {[(s['Action'], s['Resource']) for s in coord_sm]}",
    )

    print("IAM: agent role")
    agent_docs, agent_attached, agent_all = role_policies(f"{prefix}-agent")
    agent_stmts = [s for d in agent_docs for s in statements(d)]
    dyn = [s for s in agent_stmts if any(p.startswith("dynamodb:") for p in as_list(s["Action"]))]
    check(len(dyn) >= 1, "agents may use the state table")
    check(
        all(as_list(s.get("Condition", {}).get("ForAllValues:StringEquals", {}).get("dynamodb:LeadingKeys")) == [a.cluster] for s in dyn),
        "agents: leading-key condition = cluster name on every DynamoDB statement",
    )
    check(not any(any(action_matches(p, "dynamodb:DeleteItem") for p in as_list(s["Action"])) for s in agent_stmts), "agents cannot delete items (no agent code path deletes)")
    alias = lam.get_alias(FunctionName=fn_name, Name="agent-evaluate")
    alias_arn = alias["AliasArn"]
    check(alias_arn == f"{fn_arn}:agent-evaluate" and alias["FunctionVersion"] == "$LATEST", f"agent-evaluate alias on $LATEST: {alias_arn} -> {alias['FunctionVersion']}")
    inv = [s for s in agent_stmts if any(action_matches(p, "lambda:InvokeFunction") for p in as_list(s["Action"]))]
    check(len(inv) == 1 and as_list(inv[0]["Resource"]) == [alias_arn], f"agents may invoke the agent-evaluate alias only, not the function: {[s['Resource'] for s in inv]}")
    check(not any(a_.startswith("ec2:") or a_.startswith("ssm:SendCommand") for s in agent_stmts for a_ in as_list(s["Action"])), "agents cannot stop instances or run commands")
    check(agent_attached == [], f"no managed policy on the agent role (AmazonSSMManagedInstanceCore reads every parameter): {agent_attached}")
    ssm_stmts = [s for s in agent_stmts if any(x.startswith("ssm:") for x in as_list(s["Action"]))]
    params = [s for s in ssm_stmts if any(x.startswith("ssm:GetParameter") for x in as_list(s["Action"]))]
    secret_params = [f"{param_arn}{ref}/{p}" for p in purposes]
    check(
        len(params) == 1 and as_list(params[0]["Action"]) == ["ssm:GetParameter"]
        and sorted(as_list(params[0]["Resource"])) == sorted(secret_params),
        f"agents read only the cluster's four secrets' parameters: {[s['Resource'] for s in params]}",
    )
    agent_sm = [s for s in agent_stmts if any(x.startswith("secretsmanager:") for x in as_list(s["Action"]))]
    check(
        len(agent_sm) == 1 and as_list(agent_sm[0]["Action"]) == ["secretsmanager:GetSecretValue"]
        and sorted(as_list(agent_sm[0]["Resource"])) == sorted(secret_arns.values()),
        f"agents read only the cluster's generated secrets: {[(s['Action'], s['Resource']) for s in agent_sm]}",
    )

    print("Agent artifact (S3)")
    s3 = client("s3")
    buckets = [b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith(f"{prefix}-artifacts-")]
    check(len(buckets) == 1, f"one artifact bucket: {buckets}")
    bucket = buckets[0] if buckets else ""
    object_arn, bucket_arn = "", ""
    if bucket:
        bucket_arn = f"arn:aws:s3:::{bucket}"
        enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]["ApplyServerSideEncryptionByDefault"]
        check(enc.get("SSEAlgorithm") in ("AES256", "aws:kms"), f"bucket encrypted by default: {enc}")
        pab = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        check(all(pab.get(k) for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")), f"public access blocked: {pab}")
        check(s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled", "bucket versioned")
        objects = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
        check(len(objects) == 1 and re.fullmatch(r"agent/[0-9a-f]{64}/pgdaemon-agent", objects[0] or ""), f"one object, agent/<sha256>/pgdaemon-agent: {objects}")
        if objects:
            key = objects[0]
            object_arn = f"{bucket_arn}/{key}"
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            digest = hashlib.sha256(body).hexdigest()
            check(key == f"agent/{digest}/pgdaemon-agent", f"the object's key names its content's sha256 ({digest[:16]}...)")
            if a.agent_binary:
                check(digest == hashlib.sha256(open(a.agent_binary, "rb").read()).hexdigest(), "the object is the agent binary given to the apply")
    print("Backups: bucket, and the node role's S3 statements")
    backup_bucket, backup_bucket_arn, backup_prefix, restore_sources = "", "", "", []
    backup_buckets = [b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith(f"{prefix}-backups-")]
    if backups.get("enabled"):
        prefix_ = backups.get("prefix") or "pgdaemon"
        if backups.get("bucket_name"):
            backup_bucket = backups["bucket_name"]
            check(backup_buckets == [], f"no bucket created when backups.bucket_name is given: {backup_buckets}")
        else:
            check(len(backup_buckets) == 1, f"one backup bucket created: {backup_buckets}")
            backup_bucket = backup_buckets[0] if backup_buckets else ""
            if backup_bucket:
                check_backup_bucket(s3, backup_bucket, backups.get("noncurrent_days") or 30)
        backup_bucket_arn = f"arn:aws:s3:::{backup_bucket}"
        backup_prefix = f"{prefix_}/{a.cluster}/"
        for r in backups.get("restore_from_clusters") or []:
            src_bucket = f"arn:aws:s3:::{r['bucket_name']}" if r.get("bucket_name") else backup_bucket_arn
            restore_sources.append({"bucketArn": src_bucket, "keyPrefix": f"{r.get('prefix') or prefix_}/{r['cluster']}/"})
    else:
        check(backup_buckets == [], f"no backup bucket with backups off: {backup_buckets}")
    # Every S3 statement of the node role, as (actions, resources, condition): exactly these.
    agent_s3 = sorted(
        (sorted(as_list(s["Action"])), sorted(as_list(s["Resource"])), json.dumps(s.get("Condition"), sort_keys=True))
        for s in agent_stmts if any(x.startswith("s3:") for x in as_list(s["Action"]))
    )
    check(all(s["Effect"] == "Allow" for s in agent_stmts), "the node role's statements all allow (no deny to rely on)")
    want = [(["s3:GetObject"], [object_arn], "null")]
    if backups.get("enabled"):
        want += [
            # HeadBucket (every barman-cloud command's first call): s3:ListBucket without a prefix.
            (["s3:ListBucket"], sorted({backup_bucket_arn} | {r["bucketArn"] for r in restore_sources}), json.dumps({"Null": {"s3:prefix": "true"}})),
            (["s3:ListBucket"], [backup_bucket_arn], json.dumps({"StringLike": {"s3:prefix": f"{backup_prefix}*"}})),
            (["s3:DeleteObject", "s3:GetObject", "s3:PutObject"], [f"{backup_bucket_arn}/{backup_prefix}*"], "null"),
        ]
        for r in restore_sources:
            want += [
                (["s3:ListBucket"], [r["bucketArn"]], json.dumps({"StringLike": {"s3:prefix": f"{r['keyPrefix']}*"}})),
                (["s3:GetObject"], [f"{r['bucketArn']}/{r['keyPrefix']}*"], "null"),
            ]
    what = (f"the agent object, HeadBucket on {backup_bucket}, list/get/put/delete under {backup_prefix} only, get and list under "
            f"{[r['keyPrefix'] for r in restore_sources]} (restore sources)" if backups.get("enabled") else "the agent object and nothing else")
    check(agent_s3 == sorted(want), f"agents' S3 rights: {what}" + ("" if agent_s3 == sorted(want) else f": got {agent_s3}, want {sorted(want)}"))
    check(not any(x == "s3:*" or x.endswith("Version") or x.startswith("s3:PutBucket") or x.startswith("s3:DeleteBucket")
                  for s in agent_stmts for x in as_list(s["Action"])),
          "agents: no s3:*, no object-version actions, no bucket configuration")
    check(
        all(as_list(s["Action"]) == ["ssm:UpdateInstanceInformation"] for s in ssm_stmts if s not in params),
        f"no other ssm: action than the SSM agent's registration: {[s['Action'] for s in ssm_stmts if s not in params]}",
    )
    agent_actions = {x for s in agent_stmts for x in as_list(s["Action"])}
    needed = {"ssm:UpdateInstanceInformation", "ec2messages:GetMessages", "ec2messages:AcknowledgeMessage", "ec2messages:SendReply", "ssmmessages:OpenControlChannel"}
    check(needed <= agent_actions, f"the SSM agent can register and take Run Command (ssm fencing): missing {sorted(needed - agent_actions)}")

    print("IAM simulation in moto")
    try:
        role_arn = iam.get_role(RoleName=f"{prefix}-coordinator")["Role"]["Arn"]
        iam.simulate_principal_policy(PolicySourceArn=role_arn, ActionNames=["ec2:StopInstances"])
        print("  note moto implements simulate_principal_policy now: extend this check")
    except Exception as e:  # moto 5.2 has no IAM simulation: the node simulator judges instead
        print(f"  skip moto has no simulate_principal_policy ({type(e).__name__}); infra/cdk/test/iam-simulation.test.js judges the documents")

    print("EC2 launch template and Auto Scaling group")
    ec2 = client("ec2")
    lt = ec2.describe_launch_template_versions(LaunchTemplateName=f"{prefix}-node", Versions=["$Latest"])["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    check(lt.get("MetadataOptions", {}).get("HttpTokens") == "required", "IMDSv2 required")
    check(lt.get("IamInstanceProfile", {}).get("Arn", "").endswith(f"/{prefix}-agent"), f"nodes run with the agent's instance profile: {lt.get('IamInstanceProfile')}")
    check(all(b["Ebs"].get("Encrypted") for b in lt.get("BlockDeviceMappings", [])), "EBS volumes encrypted")
    ud = base64.b64decode(lt.get("UserData", "")).decode()
    check("systemctl enable --now pgdaemon-agent.service" in ud, "user data enables pgdaemon-agent.service")
    check("/etc/pgdaemon/pgdaemon.toml" in ud and f'table = "{prefix}"' in ud and f'cluster = "{a.cluster}"' in ud, "user data writes the agent config")
    check(f'lambda_function = "{fn_name}:agent-evaluate"' in ud, "agents invoke the coordinator through the agent-evaluate alias")
    check("amazon-ssm-agent" in ud, "user data enables the SSM agent")
    if object_arn:
        key = object_arn.split(":::", 1)[1].split("/", 1)[1]
        check(f"s3://{bucket}/{key}" in ud and f"AGENT_SHA256='{key.split('/')[1]}'" in ud and "sha256sum" in ud,
              "user data downloads the agent object with the instance role and checks its sha256")
    commands = [l for l in ud.splitlines() if not l.lstrip().startswith("#")]
    check(not [l for l in commands if re.search(r"\b(initdb|pg_ctl|postgresql-setup)\b", l)], "user data does not initialise or start the database (the agents' bootstrap does)")
    boot = re.search(r"^\[bootstrap\]\n(.*?)\n\n", ud, re.S | re.M)
    boot_keys = dict(line.split(" = ", 1) for line in boot.group(1).splitlines() if not line.startswith("#")) if boot else {}
    check(boot_keys.get("enabled") == "true", f"[bootstrap] enabled: {boot_keys}")
    subnet_cidrs = [sn["CidrBlock"] for sn in ec2.describe_subnets(SubnetIds=fn.get("VpcConfig", {}).get("SubnetIds", []))["Subnets"]]
    api = re.search(r"^\[api\]\n(.*?)\n\n", ud, re.S | re.M)
    api_keys = dict(line.split(" = ", 1) for line in api.group(1).splitlines() if not line.startswith("#")) if api else {}
    check(api_keys.get("token_ssm_parameter") == f'"{token_param}"', f"agents' API token from the SSM parameter: {api_keys}")
    check(
        sorted(json.loads(api_keys.get("allowlist", "null")) or []) == sorted(subnet_cidrs) and api_keys.get("allowlist_include_members") == "true",
        f"agents' API allow-list: the subnets' CIDRs {subnet_cidrs} and the members: {api_keys}",
    )
    check(sorted(json.loads(boot_keys.get("peer_networks", "null")) or []) == sorted(subnet_cidrs), f"[bootstrap] peer_networks: the subnets' CIDRs: {boot_keys.get('peer_networks')}")
    check(set(subnet_cidrs) <= set(json.loads(boot_keys.get("client_networks", "null")) or []), f"[bootstrap] client_networks include the subnets: {boot_keys.get('client_networks')}")
    arch = re.search(r"^\[archive\]\n(.*?)\n\n", ud, re.S | re.M)
    arch_keys = dict(line.split(" = ", 1) for line in arch.group(1).splitlines() if not line.startswith("#")) if arch else {}
    if backups.get("enabled"):
        destination = f"s3://{backup_bucket}/{backups.get('prefix') or 'pgdaemon'}"
        check(arch_keys == {"destination": f'"{destination}"'}, f"[archive] destination = \"{destination}\" (and no endpoint_url: AWS's): {arch_keys}")
        check("command -v barman-cloud-wal-archive" in ud and "'barman[cloud]==3.4.0'" in ud,
              "user data installs barman-cloud unless the AMI has it")
    else:
        check(arch is None and "barman-cloud-wal-archive" not in ud, "no [archive] section and no barman-cloud install with backups off")
    if a.user_data_out:
        with open(a.user_data_out, "w") as f:
            f.write(ud)
    asg_client = client("autoscaling")
    asg = asg_client.describe_auto_scaling_groups(AutoScalingGroupNames=[f"{prefix}-nodes"])["AutoScalingGroups"][0]
    check(asg["MinSize"] == asg["MaxSize"] == asg["DesiredCapacity"] == 3, "3 nodes, fixed size")
    check(asg["HealthCheckType"] == "EC2", "EC2 health checks (replicas fail /primary by design)")
    check(len(asg.get("TargetGroupARNs", [])) == 2, "registered in both target groups")
    check(any(t["Key"] == a.tag_key and t["Value"] == a.cluster and t["PropagateAtLaunch"] for t in asg["Tags"]), "instances get the cluster tag")

    instances = [
        i
        for r in ec2.describe_instances(Filters=[{"Name": f"tag:{a.tag_key}", "Values": [a.cluster]}])["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] in ("pending", "running")
    ]
    check(len(instances) == 3, f"the group launched 3 instances carrying the cluster tag: {len(instances)}")

    print("Internal NLB and target groups")
    elb = client("elbv2")
    lbs = [lb for lb in elb.describe_load_balancers()["LoadBalancers"] if lb["LoadBalancerName"].startswith(prefix)]
    check(len(lbs) == 1 and lbs[0]["Type"] == "network" and lbs[0]["Scheme"] == "internal", "one internal network load balancer")
    tgs = {tg["TargetGroupName"]: tg for tg in elb.describe_target_groups()["TargetGroups"] if tg["TargetGroupName"].startswith(prefix)}
    w, r = tgs.get(f"{prefix}-writer", {}), tgs.get(f"{prefix}-readers", {})
    check(w.get("HealthCheckPath") == "/primary" and w.get("HealthCheckProtocol") == "HTTP" and w.get("HealthCheckPort") == "8008", "writer health-checked on the agent's /primary")
    check(r.get("HealthCheckPath") == "/replica" and r.get("HealthCheckProtocol") == "HTTP" and r.get("HealthCheckPort") == "8008", "readers health-checked on the agent's /replica")
    if lbs:
        ls = {l["Port"]: l["DefaultActions"][0]["TargetGroupArn"] for l in elb.describe_listeners(LoadBalancerArn=lbs[0]["LoadBalancerArn"])["Listeners"]}
        check(ls.get(5432) == w.get("TargetGroupArn") and ls.get(5433) == r.get("TargetGroupArn"), f"5432 -> writer, 5433 -> readers: {sorted(ls)}")

    print("Security groups")
    sgs = {g["GroupName"]: g for g in ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [f"{prefix}-*"]}])["SecurityGroups"]}
    nodes, nlb, coord = sgs.get(f"{prefix}-nodes"), sgs.get(f"{prefix}-nlb"), sgs.get(f"{prefix}-coordinator")
    check(None not in (nodes, nlb, coord), f"node, NLB and coordinator groups: {sorted(sgs)}")
    if None not in (nodes, nlb, coord):
        def sources(port):
            out = set()
            for p in nodes["IpPermissions"]:
                if p.get("FromPort", 0) <= port <= p.get("ToPort", 65535):
                    out |= {x["GroupId"] for x in p.get("UserIdGroupPairs", [])}
                    out |= {x["CidrIp"] for x in p.get("IpRanges", [])}
            return out

        check(sources(5432) == {nodes["GroupId"], nlb["GroupId"]}, "Postgres only from the cluster and the NLB")
        check(sources(8008) == {nodes["GroupId"], nlb["GroupId"], coord["GroupId"]}, "agent API only from the cluster, the NLB and the coordinator")

    with open(a.policies_out, "w") as f:
        json.dump(
            {
                "cluster": a.cluster,
                "tagKey": a.tag_key,
                "region": a.region,
                "account": fn_arn.split(":")[4],
                "tableArn": table["TableArn"],
                "functionArn": fn_arn,
                "agentAliasArn": alias_arn,
                "coordinator": coord_all,
                "agent": agent_all,
                "agentManagedArns": agent_attached,
                "secretParameterArns": {p: f"{param_arn}{ref}/{p}" for p in purposes},
                "secretArns": secret_arns,
                "agentObjectArn": object_arn,
                "agentBucketArn": bucket_arn,
                "backups": {"bucketArn": backup_bucket_arn, "prefix": backup_prefix, "restoreSources": restore_sources} if backups.get("enabled") else None,
            },
            f,
            indent=1,
        )

    print(f"{len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ClientError, KeyError, IndexError) as e:
        print(f"  FAIL could not read a resource from moto: {type(e).__name__}: {e}")
        sys.exit(1)
