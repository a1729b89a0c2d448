#!/usr/bin/env python3
"""Asserts what `terraform apply` of infra/terraform/examples/fleet created in moto (fleet mode).

One coordinator Lambda and one table for every cluster of the fleet: the table's fleet index, the
function's environment (registry discovery, no fixed cluster list), its role (the whole table, the
index, fencing of any cluster-tagged instance, each cluster's API token by the naming pattern,
invoking itself for shards), its alarms and dashboard; and per cluster: no table or function of its
own, the agents confined to their cluster's items in the fleet's table and to the fleet's
agent-evaluate alias, the nodes, the security-group path from the fleet's coordinator, the
cluster's alarms and dashboard.

Usage: assert_fleet_moto.py --endpoint URL --region R --fleet NAME --clusters a,b --tag-key KEY --node-count N
"""
import argparse
import base64
import json
import re
import sys

import boto3
from botocore.exceptions import ClientError

from assert_terraform_moto import FAILURES, SPECS, as_list, check, check_fleet_index, statements


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--region", required=True)
    ap.add_argument("--fleet", required=True)
    ap.add_argument("--clusters", required=True, help="comma-separated cluster names of the fleet")
    ap.add_argument("--tag-key", required=True)
    ap.add_argument("--node-count", type=int, required=True)
    a = ap.parse_args()
    clusters = a.clusters.split(",")

    def client(name):
        return boto3.client(name, endpoint_url=a.endpoint, region_name=a.region, aws_access_key_id="test", aws_secret_access_key="test")

    prefix = f"pgdaemon-{a.fleet}"
    tag = f"aws:ResourceTag/{a.tag_key}"
    ddb, lam, iam, ec2, cw = client("dynamodb"), client("lambda"), client("iam"), client("ec2"), client("cloudwatch")

    print(f"The fleet's table {prefix}")
    table = ddb.describe_table(TableName=prefix)["Table"]
    keys = {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]}
    check(keys == {"cluster": "HASH", "item": "RANGE"}, f"key schema cluster/item: {keys}")
    check_fleet_index(table)
    check(table.get("BillingModeSummary", {}).get("BillingMode") == "PAY_PER_REQUEST", "on-demand billing")
    ttl = ddb.describe_time_to_live(TableName=prefix)["TimeToLiveDescription"]
    check(ttl.get("AttributeName") == "expire_at" and ttl.get("TimeToLiveStatus") == "ENABLED", f"TTL on expire_at: {ttl}")
    pitr = ddb.describe_continuous_backups(TableName=prefix)["ContinuousBackupsDescription"]
    check(pitr["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED", "point-in-time recovery")
    tables = ddb.list_tables()["TableNames"]
    check(not [c for c in clusters if f"pgdaemon-{c}" in tables], f"no table of a cluster's own: {tables}")

    print("One coordinator for the fleet")
    functions = [f["FunctionName"] for f in lam.list_functions()["Functions"]]
    check(not [c for c in clusters if f"pgdaemon-{c}-coordinator" in functions], f"no coordinator of a cluster's own: {functions}")
    fn_name = f"{prefix}-coordinator"
    fn = lam.get_function(FunctionName=fn_name)["Configuration"]
    fn_arn = fn["FunctionArn"]
    account = fn_arn.split(":")[4]
    env = fn.get("Environment", {}).get("Variables", {})
    check("PGDAEMON_CLUSTERS" not in env, f"no PGDAEMON_CLUSTERS (the registry lists the clusters): {env.get('PGDAEMON_CLUSTERS')}")
    check(env.get("PGDAEMON_DISCOVERY") == "registry", f"PGDAEMON_DISCOVERY registry: {env.get('PGDAEMON_DISCOVERY')}")
    check(env.get("PGDAEMON_CLUSTERS_PER_INVOCATION") == "250", f"PGDAEMON_CLUSTERS_PER_INVOCATION: {env.get('PGDAEMON_CLUSTERS_PER_INVOCATION')}")
    check(env.get("PGDAEMON_TABLE") == prefix, f"PGDAEMON_TABLE: {env.get('PGDAEMON_TABLE')}")
    token_pattern = "/aws/reference/secretsmanager/pgdaemon/{cluster}/api-token"
    check(env.get("PGDAEMON_API_TOKEN_PARAMETER") == token_pattern, f"PGDAEMON_API_TOKEN_PARAMETER by cluster: {env.get('PGDAEMON_API_TOKEN_PARAMETER')}")
    check(env.get("PGDAEMON_CLUSTER_TAG_KEY") == a.tag_key, "PGDAEMON_CLUSTER_TAG_KEY")
    conc = lam.get_function_concurrency(FunctionName=fn_name).get("ReservedConcurrentExecutions")
    check(conc is not None and conc >= 2, f"reserved concurrency for the shards and the agents: {conc}")
    alias = lam.get_alias(FunctionName=fn_name, Name="agent-evaluate")
    alias_arn = alias["AliasArn"]
    check(alias_arn == f"{fn_arn}:agent-evaluate" and alias["FunctionVersion"] == "$LATEST", f"agent-evaluate alias on $LATEST: {alias_arn}")
    try:
        eic = lam.get_function_event_invoke_config(FunctionName=fn_name)
        check(eic.get("MaximumRetryAttempts") == 0 and eic.get("MaximumEventAgeInSeconds") == 60, f"shard invocations not retried, dropped after 60 s: {eic.get('MaximumRetryAttempts')}, {eic.get('MaximumEventAgeInSeconds')} s")
    except ClientError as e:
        print(f"  skip moto does not answer get_function_event_invoke_config ({e.response['Error']['Code']})")
    ev = client("events")
    rule = ev.describe_rule(Name=f"{prefix}-coordinator-schedule")
    check([t["Arn"] for t in ev.list_targets_by_rule(Rule=rule["Name"])["Targets"]] == [fn_arn], "the schedule targets the fleet's coordinator")

    print("IAM: the fleet coordinator's role")
    docs = [iam.get_role_policy(RoleName=f"{prefix}-coordinator", PolicyName=n)["PolicyDocument"] for n in iam.list_role_policies(RoleName=f"{prefix}-coordinator")["PolicyNames"]]
    stmts = [s for d in docs for s in statements(d)]

    def allowing(action):
        return [s for s in stmts if s["Effect"] == "Allow" and action in as_list(s["Action"])]

    inv = allowing("lambda:InvokeFunction")
    check([as_list(s["Resource"]) for s in inv] == [[fn_arn]], f"invokes only itself, unqualified (its shards): {[s['Resource'] for s in inv]}")
    table_arn = table["TableArn"]
    query = allowing("dynamodb:Query")
    check(any(as_list(s["Resource"]) == [f"{table_arn}/index/fleet"] for s in query), f"Query on the fleet index: {[s['Resource'] for s in query]}")
    items = [s for s in stmts if any(x.startswith("dynamodb:") and x != "dynamodb:DescribeTable" for x in as_list(s["Action"]))]
    check(all(set(as_list(s["Resource"])) <= {table_arn, f"{table_arn}/index/fleet"} for s in items), "DynamoDB only on its table and the fleet index")
    check(not any("dynamodb:LeadingKeys" in json.dumps(s.get("Condition", {})) for s in items), "no LeadingKeys condition (it serves every cluster of the table)")
    for action in ("ec2:StopInstances", "ssm:SendCommand"):
        on_instances = [s for s in allowing(action) if any(":instance/" in r or r == "*" for r in as_list(s["Resource"]))]
        check(
            len(on_instances) == 1 and on_instances[0].get("Condition") == {"Null": {tag: "false"}},
            f"{action} on instances only with the cluster tag present: {[s.get('Condition') for s in on_instances]}",
        )
    params = [s for s in stmts if any(x.startswith("ssm:GetParameter") for x in as_list(s["Action"]))]
    want_param = f"arn:aws:ssm:{a.region}:{account}:parameter/aws/reference/secretsmanager/pgdaemon/*/api-token"
    check([(as_list(s["Action"]), as_list(s["Resource"])) for s in params] == [(["ssm:GetParameter"], [want_param])], f"reads the clusters' API tokens only: {[s['Resource'] for s in params]}")
    sm = [s for s in stmts if any(x.startswith("secretsmanager:") for x in as_list(s["Action"]))]
    want_secret = f"arn:aws:secretsmanager:{a.region}:{account}:secret:pgdaemon/*/api-token-??????"
    check([(as_list(s["Action"]), as_list(s["Resource"])) for s in sm] == [(["secretsmanager:GetSecretValue"], [want_secret])], f"reads the API tokens' secrets only: {[s['Resource'] for s in sm]}")
    check(not any(as_list(s["Action"]) in (["*"], ["ec2:*"], ["ssm:*"], ["dynamodb:*"], ["lambda:*"]) for s in stmts), "no wildcard service access")

    print("Alarms and dashboards")
    specs = json.loads((SPECS / "alarms.json").read_text())
    fleet_alarms = {x["AlarmName"]: x for x in cw.describe_alarms(AlarmNamePrefix=f"{prefix}-")["MetricAlarms"]}
    want = sorted(f"{prefix}-{s['id']}" for s in specs if s["dimension"] == "function")
    check(sorted(fleet_alarms) == want, f"the fleet's alarms are the function's: {sorted(fleet_alarms)}, want {want}")
    check(all({d["Name"]: d["Value"] for d in x["Dimensions"]} == {"FunctionName": fn_name} for x in fleet_alarms.values()), "on the fleet's function")
    dashboards = {d["DashboardName"] for d in cw.list_dashboards()["DashboardEntries"]}
    check(prefix in dashboards, f"the fleet's dashboard: {sorted(dashboards)}")
    if prefix in dashboards:
        body = cw.get_dashboard(DashboardName=prefix)["DashboardBody"]
        check(fn_name in body and "SEARCH(" in body and "${" not in body, "the fleet's dashboard: its function and every cluster (search), fully rendered")

    print("Security group of the fleet's coordinator")
    sgs = {g["GroupName"]: g for g in ec2.describe_security_groups()["SecurityGroups"]}
    coord_sg = sgs.get(f"{prefix}-coordinator", {})
    egress_groups = {p["GroupId"] for r in coord_sg.get("IpPermissionsEgress", []) if r.get("FromPort") == 8008 for p in r.get("UserIdGroupPairs", [])}
    fn_subnets = fn.get("VpcConfig", {}).get("SubnetIds", [])
    fleet_cidrs = [sn["CidrBlock"] for sn in ec2.describe_subnets(SubnetIds=fn_subnets)["Subnets"]] if fn_subnets else []

    agent_policies = {}
    for c in clusters:
        cp = f"pgdaemon-{c}"
        print(f"Cluster {c}")
        roles = {r["RoleName"] for r in iam.list_roles()["Roles"]}
        check(f"{cp}-coordinator" not in roles and f"{cp}-agent" in roles, f"an agent role and no coordinator role: {sorted(r for r in roles if r.startswith(cp + '-'))}")
        adocs = [iam.get_role_policy(RoleName=f"{cp}-agent", PolicyName=n)["PolicyDocument"] for n in iam.list_role_policies(RoleName=f"{cp}-agent")["PolicyNames"]]
        astmts = [s for d in adocs for s in statements(d)]
        agent_policies[c] = adocs
        dyn = [s for s in astmts if any(x.startswith("dynamodb:") for x in as_list(s["Action"]))]
        check(
            len(dyn) >= 1
            and all(as_list(s["Resource"]) == [table_arn] for s in dyn)
            and all(as_list(s.get("Condition", {}).get("ForAllValues:StringEquals", {}).get("dynamodb:LeadingKeys")) == [c] for s in dyn),
            "agents: the fleet's table, their own cluster's items only (the registration item included)",
        )
        ainv = [s for s in astmts if "lambda:InvokeFunction" in as_list(s["Action"])]
        check([as_list(s["Resource"]) for s in ainv] == [[alias_arn]], f"agents invoke the fleet's agent-evaluate alias only: {[s['Resource'] for s in ainv]}")
        asg = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[f"{cp}-nodes"])["AutoScalingGroups"]
        check(len(asg) == 1 and asg[0]["DesiredCapacity"] == a.node_count, f"{a.node_count} nodes")
        inst = [i for r in ec2.describe_instances(Filters=[{"Name": f"tag:{a.tag_key}", "Values": [c]}])["Reservations"] for i in r["Instances"] if i["State"]["Name"] in ("pending", "running")]
        check(len(inst) == a.node_count, f"{a.node_count} instances carry the cluster tag: {len(inst)}")
        lt = ec2.describe_launch_template_versions(LaunchTemplateName=f"{cp}-node", Versions=["$Latest"])["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        ud = base64.b64decode(lt.get("UserData", "")).decode()
        check(f'table = "{prefix}"' in ud and f'cluster = "{c}"' in ud, "the agents use the fleet's table")
        check(f'lambda_function = "{fn_name}:agent-evaluate"' in ud, "the agents invoke the fleet's coordinator through its alias")
        api = re.search(r"^\[api\]\n(.*?)\n\n", ud, re.S | re.M)
        api_keys = dict(line.split(" = ", 1) for line in api.group(1).splitlines() if not line.startswith("#")) if api else {}
        check(set(fleet_cidrs) <= set(json.loads(api_keys.get("allowlist", "[]"))), f"the agents' API admits the fleet coordinator's subnets {fleet_cidrs}: {api_keys.get('allowlist')}")
        check(api_keys.get("token_ssm_parameter") == f'"{token_pattern.replace("{cluster}", c)}"', f"the agents' token is where the fleet reads it: {api_keys.get('token_ssm_parameter')}")
        nodes = sgs.get(f"{cp}-nodes", {})
        ingress = {p["GroupId"] for r in nodes.get("IpPermissions", []) if r.get("FromPort") == 8008 for p in r.get("UserIdGroupPairs", [])}
        check(coord_sg.get("GroupId") in ingress, "the nodes' agent API admits the fleet's coordinator")
        check(nodes.get("GroupId") in egress_groups, "the fleet's coordinator may reach this cluster's agent API")
        alarms = sorted(x["AlarmName"] for x in cw.describe_alarms(AlarmNamePrefix=f"{cp}-")["MetricAlarms"])
        want = sorted(f"{cp}-{s['id']}" for s in specs if s["dimension"] == "cluster")
        check(alarms == want, f"the cluster's alarms (no function alarm of its own): {alarms}")
        check(cp in dashboards, "the cluster's dashboard")
        if cp in dashboards:
            body = json.loads(cw.get_dashboard(DashboardName=cp)["DashboardBody"])
            series = [m for w in body["widgets"] for m in w["properties"].get("metrics", [])]
            check(all(m[3] in (c, fn_name) for m in series), "the cluster's dashboard: its metrics and the fleet's function")

    print(f"{len(FAILURES)} failed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ClientError, KeyError, IndexError) as e:
        print(f"  FAIL could not read a resource from moto: {type(e).__name__}: {e}")
        sys.exit(1)
