#!/usr/bin/env python3
"""Extracts the agent config a node would write at boot from the user data of either stack.

Input: the decoded user data script (Terraform, read back from moto's launch template) or the
synthesized CloudFormation template (CDK). Output: /etc/pgdaemon/pgdaemon.toml as the user data's
sed would write it on an instance with the given identity, for `pgdaemon-agent check-config`.
Also checks that the user data installs and enables the agent's unit.

Usage: agent_config.py (--user-data FILE | --cfn-template FILE) --out FILE
"""
import argparse
import ipaddress
import json
import re
import sys
import tomllib

# What IMDS would answer on a node.
IDENTITY = {"@INSTANCE_ID@": "i-0123456789abcdef0", "@PRIVATE_IP@": "10.20.1.10", "@REGION@": "eu-west-1"}


def user_data_from_template(path: str) -> str:
    t = json.load(open(path))
    lts = [r for r in t["Resources"].values() if r["Type"] == "AWS::EC2::LaunchTemplate"]
    if len(lts) != 1:
        sys.exit(f"expected one launch template, found {len(lts)}")
    ud = lts[0]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]
    if not isinstance(ud, str):
        sys.exit("the user data holds unresolved CloudFormation tokens; it must be a plain script")
    return ud


def main() -> int:
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--user-data")
    src.add_argument("--cfn-template")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    ud = open(a.user_data).read() if a.user_data else user_data_from_template(a.cfn_template)

    m = re.search(r"<<'PGDAEMON_CONFIG'\n(.*?)\nPGDAEMON_CONFIG\n", ud, re.S)
    if not m:
        sys.exit("no PGDAEMON_CONFIG heredoc in the user data")
    config = m.group(1)
    for k, v in IDENTITY.items():
        config = config.replace(k, v)
    leftover = re.findall(r"@[A-Z_]+@|\$\{[^}]*\}", config)
    if leftover:
        sys.exit(f"unfilled placeholders in the config: {leftover}")
    unit = re.search(r"<<'PGDAEMON_UNIT'\n(.*?)\nPGDAEMON_UNIT\n", ud, re.S)
    if not unit or "ExecStart=" not in unit.group(1) or "systemctl enable --now pgdaemon-agent.service" not in ud:
        sys.exit("the user data does not install and enable pgdaemon-agent.service")
    # Beyond the agent's own listen rule (ApiConfig::check_listen, which `check-config` applies too):
    # a deployed node has no secret file, so the token must come from SSM, and never insecure.
    parsed = tomllib.loads(config)
    host = parsed.get("node", {}).get("listen", "").rsplit(":", 1)[0].strip("[]")
    api = parsed.get("api", {})
    if not ipaddress.ip_address(host).is_loopback:
        if not api.get("token_ssm_parameter", "").startswith("/"):
            sys.exit(f"the agent listens on {host} but [api] has no token_ssm_parameter: it would refuse to start")
        if api.get("insecure"):
            sys.exit("[api] insecure = true on a deployed node")
        if not api.get("allowlist_include_members") or not api.get("allowlist"):
            print(f"note: [api] allowlist {api.get('allowlist')} (members: {api.get('allowlist_include_members')}): POSTs from non-members refused unless listed")
    # [archive] (backups on): barman-cloud to S3 at AWS's own endpoint with the instance role.
    archive = parsed.get("archive")
    if archive is not None:
        if not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*", archive.get("destination", "")):
            sys.exit(f"[archive] destination must be s3://<bucket>/<prefix>: {archive.get('destination')!r}")
        if "endpoint_url" in archive:
            sys.exit(f"[archive] endpoint_url on a deployed node ({archive['endpoint_url']}): the nodes use AWS's S3 endpoint")
        if "command -v barman-cloud-wal-archive" not in ud:
            sys.exit("[archive] is set but the user data does not install barman-cloud")
    with open(a.out, "w") as f:
        f.write(config + "\n")
    print(f"agent config written to {a.out} ({len(config.splitlines())} lines); unit installed and enabled; "
          f"API on {host} with the token from {api.get('token_ssm_parameter')}, allow-list {api.get('allowlist')} + members; "
          f"archive: {archive['destination'] if archive else 'off'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
