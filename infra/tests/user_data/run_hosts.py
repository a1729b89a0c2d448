#!/usr/bin/env python3
"""The nodes' user data, run for three hosts on this machine against the moto server the
Terraform example was applied to (README.md beside this file says what is replaced and why).

1. Reads the user data back from the applied launch template (base64, as EC2 would hand it to
   cloud-init), the Auto Scaling group's instances and the coordinator's configuration from moto.
2. Starts the stand-ins for what cannot exist here: an IMDS per host, the Lambda service (the real
   coordinator binary polling a local runtime API).
3. Runs the user data, rewritten only to redirect absolute paths into the host's directory tree,
   the IMDS address and the Postgres binaries' directory, for three hosts at once (127.0.0.11-13).
   Each downloads the agent from S3 and checks its sha256, writes the config and starts the agent
   (systemctl stand-in); the agents read their secrets from SSM (Secrets Manager references) and
   bootstrap the cluster in DynamoDB by themselves.
4. Waits for one primary and two streaming replicas (agents' /cluster, the store's items, and
   Postgres itself), checks exactly one initdb, the administrator role over TLS with the
   generated password, then kills the primary host's agent and Postgres (by PID) and waits for a
   replica to take over (the coordinator fences the old primary's instance in moto).
5. Stops every process it started, by PID, whatever happened.

Also checks that a wrong checksum stops the boot (a fourth, throw-away run of host 1's script).
"""
import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import boto3

sys.dont_write_bytecode = True  # no __pycache__ beside the sources
from aws_standins import LocalLambda, imds  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


class Failure(Exception):
    pass


# Absolute paths of the user data (and of the config and units it writes) that belong to the host:
# prefixed with the host's root. Nothing else in the script is changed but the two lines below.
HOST_PATHS = ["/var/lib/pgsql", "/etc/pgdaemon", "/etc/systemd/system", "/etc/fstab", "/usr/local/bin",
              "/run/postgresql", "/var/log/pgdaemon-user-data.log", "/opt/barman-cloud"]


def rewrite(user_data, root, imds_url, pg_bin, s3_endpoint):
    """The host's copy of the script: its paths in its tree, its IMDS, this machine's Postgres,
    and (backups on) the S3 endpoint barman-cloud reaches: moto, as the VPC's S3 endpoint would
    be AWS's. barman-cloud's boto3 here (Debian's 1.26) ignores AWS_ENDPOINT_URL, so the
    agent's [archive] endpoint_url says it."""
    pattern = re.compile(r"(?<![\w./])(" + "|".join(re.escape(p) for p in HOST_PATHS) + r")(?=[/\s'\"|:;)]|$)")
    out = pattern.sub(lambda m: root + m.group(1), user_data)
    out = out.replace("http://169.254.169.254", imds_url)
    # Amazon Linux's postgresql15-server installs into /usr/bin; this machine's into pg_bin.
    out, n = re.subn(r'^bin_dir = "/usr/bin"$', f'bin_dir = "{pg_bin}"', out, flags=re.M)
    if n != 1:
        raise Failure("the user data's config has no bin_dir = \"/usr/bin\" line to point at this machine's Postgres")
    if "\n[archive]\n" in out:
        out, n = re.subn(r'^(destination = "s3://[^"]+")$', lambda m: f'{m.group(1)}\nendpoint_url = "{s3_endpoint}"', out, flags=re.M)
        if n != 1:
            raise Failure("the user data's [archive] section has no destination = \"s3://...\" line")
    return out


def free(addr, port):
    s = socket.socket()
    try:
        s.bind((addr, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


class Run:
    def __init__(self, a):
        self.a = a
        self.aws = lambda svc: boto3.client(svc, endpoint_url=a.endpoint, region_name=a.region)
        self.prefix = f"pgdaemon-{a.cluster}"
        self.pids = []  # (what, pid)
        self.hosts = []
        self.lam = None
        self.coordinator = None
        self.servers = []

    # --- bookkeeping of processes ----------------------------------------------------------------
    def record(self, what, pid):
        self.pids.append((what, pid))
        with open(self.a.pids_file, "a") as f:
            f.write(f"{pid} {what}\n")

    def standin_pids(self):
        out = []
        path = os.path.join(self.a.work, "standin-pids")
        if os.path.exists(path):
            for line in open(path):
                host, unit, pid = line.split()
                out.append((f"{host} {unit}", int(pid)))
        return out

    @staticmethod
    def alive(pid):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        try:  # a zombie of ours is dead
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False

    def kill(self, pid, sig=signal.SIGKILL, wait=10.0):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline and self.alive(pid):
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
        if self.alive(pid):
            os.kill(pid, signal.SIGKILL)

    def ours(self, pid):
        """Still the process we started (its command line names our tree), not a reused PID."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return self.a.work.encode() in f.read()
        except OSError:
            return False

    @staticmethod
    def children(pid):
        kids = []
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        if int(f.read().split(")")[-1].split()[1]) == pid:
                            kids.append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
        return kids

    def postmaster(self, host):
        try:
            return int(open(os.path.join(host["root"], "var/lib/pgsql/data/postmaster.pid")).readline())
        except (OSError, ValueError):
            return None

    def cleanup(self):
        # Agents and helpers first (so nothing restarts Postgres), then each Postgres, then ours.
        for what, pid in self.standin_pids():
            if self.ours(pid):
                self.kill(pid, signal.SIGKILL, 5)
        for host in self.hosts:
            pm = self.postmaster(host)
            if pm and self.alive(pm) and self.ours(pm):
                kids = self.children(pm)
                self.kill(pm, signal.SIGQUIT, 10)  # immediate shutdown
                for k in kids:
                    self.kill(k, signal.SIGKILL, 2)
        if self.coordinator and self.coordinator.poll() is None:
            self.coordinator.terminate()
            try:
                self.coordinator.wait(5)
            except subprocess.TimeoutExpired:
                self.coordinator.kill()
                self.coordinator.wait()
        if self.lam:
            self.lam.close()
        for s in self.servers:
            s.shutdown()
        left = [(w, p) for w, p in self.standin_pids() if self.alive(p) and self.ours(p)]
        left += [(f"{h['name']} postgres", self.postmaster(h)) for h in self.hosts
                 if self.postmaster(h) and self.alive(self.postmaster(h)) and self.ours(self.postmaster(h))]
        if left:
            log(f"WARNING still running after cleanup: {left}")

    # --- steps -----------------------------------------------------------------------------------
    def read_stack(self):
        ec2 = self.aws("ec2")
        lt = ec2.describe_launch_template_versions(LaunchTemplateName=f"{self.prefix}-node", Versions=["$Latest"])
        self.user_data = base64.b64decode(lt["LaunchTemplateVersions"][0]["LaunchTemplateData"]["UserData"]).decode()
        res = ec2.describe_instances(Filters=[{"Name": f"tag:{self.a.tag_key}", "Values": [self.a.cluster]},
                                              {"Name": "instance-state-name", "Values": ["pending", "running"]}])
        self.instances = sorted((i for r in res["Reservations"] for i in r["Instances"]), key=lambda i: i["InstanceId"])
        if len(self.instances) < self.a.hosts:
            raise Failure(f"the Auto Scaling group has {len(self.instances)} instances in moto, need {self.a.hosts}")
        fn = self.aws("lambda").get_function_configuration(FunctionName=f"{self.prefix}-coordinator")
        self.function = fn
        log(f"user data: {len(self.user_data)} bytes from launch template {self.prefix}-node; instances "
            f"{[i['InstanceId'] for i in self.instances[:self.a.hosts]]}; coordinator {fn['FunctionName']}")
        for need in ("aws s3 cp", "sha256sum", "[bootstrap]", "systemctl enable --now pgdaemon-agent.service"):
            if need not in self.user_data:
                raise Failure(f"the user data lacks {need!r}")
        # Backups on: the user data installs barman-cloud only when it is missing (from PyPI,
        # which this test must not reach): this machine must have it, as an AMI can.
        self.archive = re.search(r'^\[archive\]\ndestination = "s3://([^/"]+)/([^"]+)"$', self.user_data, re.M)
        if "\n[archive]\n" in self.user_data and not self.archive:
            raise Failure("the user data's [archive] section has no destination = \"s3://<bucket>/<prefix>\"")
        if self.archive and not shutil.which("barman-cloud-wal-archive"):
            raise Failure("backups are on: install barman-cli-cloud on this machine (apt-get install barman-cli-cloud), "
                          "else the user data would install it from PyPI")
        if self.archive:
            log(f"archive: s3://{self.archive.group(1)}/{self.archive.group(2)} (barman-cloud here: "
                f"{shutil.which('barman-cloud-wal-archive')}; endpoint_url = moto)")

    def start_lambda(self):
        fn = self.function
        self.lam = LocalLambda(fn["FunctionName"], fn["FunctionArn"], fn["Timeout"])
        env = dict(fn.get("Environment", {}).get("Variables", {}))
        env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
        env.update({
            "PATH": os.environ["PATH"],
            "AWS_ENDPOINT_URL": self.a.endpoint,
            "AWS_LAMBDA_RUNTIME_API": self.lam.url.removeprefix("http://"),
            "AWS_LAMBDA_FUNCTION_NAME": fn["FunctionName"],
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(fn.get("MemorySize", 256)),
        })
        logf = open(os.path.join(self.a.work, "coordinator.log"), "ab")
        p = subprocess.Popen([self.a.coordinator_bin], env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        self.record("coordinator (bootstrap)", p.pid)
        self.coordinator = p
        log(f"coordinator: the real bootstrap binary, pid {p.pid}, on the local Lambda runtime API {self.lam.url}")

    def make_hosts(self):
        for n in range(self.a.hosts):
            inst = self.instances[n]
            name, ip = f"host{n + 1}", f"127.0.0.{11 + n}"
            for port in (5432, 8008):
                if not free(ip, port):
                    raise Failure(f"{ip}:{port} is taken on this machine: the test needs it free")
            root = os.path.join(self.a.work, "hosts", name)
            for d in ("etc/systemd/system", "var/log", "var/lib", "run", "usr/local/bin"):
                os.makedirs(os.path.join(root, d), exist_ok=True)
            open(os.path.join(root, "etc/fstab"), "a").close()  # every root has one
            az = inst["Placement"]["AvailabilityZone"]
            server, url = imds({"instance-id": inst["InstanceId"], "local-ipv4": ip,
                                "placement/region": self.a.region, "placement/availability-zone": az})
            self.servers.append(server)
            self.hosts.append({"name": name, "ip": ip, "root": root, "imds": url, "instance": inst["InstanceId"]})
        # The agent runs as postgres: it must reach its tree (a real root is world-traversable too).
        for d in (self.a.work, os.path.join(self.a.work, "hosts")) + tuple(h["root"] for h in self.hosts):
            os.chmod(d, 0o755)
        up = os.path.dirname(self.a.work)
        while up != "/":
            if not os.stat(up).st_mode & 0o001:
                raise Failure(f"{up} is not traversable by others: the hosts' services (user postgres) cannot reach {self.a.work}")
            up = os.path.dirname(up)
        for h in self.hosts:
            for dirpath, dirnames, _ in os.walk(h["root"]):
                for d in dirnames:
                    os.chmod(os.path.join(dirpath, d), 0o755)

    def host_env(self, host):
        env = dict(os.environ)
        env.update({
            "PATH": os.path.join(HERE, "standins") + ":" + os.environ["PATH"],
            "PGDAEMON_HOST_ROOT": host["root"],
            "PGDAEMON_HOST_NAME": host["name"],
            "PGDAEMON_STANDIN_PIDS": os.path.join(self.a.work, "standin-pids"),
            # What the services get from outside their unit on EC2: IMDS at its address (here
            # this host's), the Lambda API through the VPC (here the local Lambda).
            "PGDAEMON_STANDIN_SERVICE_ENV": json.dumps({"PGDAEMON_NODE__IMDS_ENDPOINT": host["imds"],
                                                         "AWS_ENDPOINT_URL_LAMBDA": self.lam.url}),
            "AWS_ENDPOINT_URL": self.a.endpoint,
        })
        return env

    def wrong_checksum_stops_the_boot(self):
        """Host 1's script with another expected sha256, in a scratch tree: it must stop there."""
        host = dict(self.hosts[0], name="host1-bad-checksum", root=os.path.join(self.a.work, "scratch-bad-checksum"))
        for d in ("etc/systemd/system", "var/log", "var/lib", "run", "usr/local/bin"):
            os.makedirs(os.path.join(host["root"], d), exist_ok=True)
        script = rewrite(self.user_data, host["root"], host["imds"], self.a.pg_bin, self.a.endpoint)
        script, n = re.subn(r"^AGENT_SHA256='[0-9a-f]{64}'$", "AGENT_SHA256='" + "0" * 64 + "'", script, flags=re.M)
        if n != 1:
            raise Failure("no AGENT_SHA256='<sha256>' line in the user data")
        r = subprocess.run(["bash", "-c", script], env=self.host_env(host), capture_output=True, text=True, timeout=120)
        if r.returncode == 0 or "the deployment expects 000000" not in r.stdout + r.stderr:
            raise Failure(f"a wrong checksum did not stop the boot (exit {r.returncode}):\n{(r.stdout + r.stderr)[-2000:]}")
        if os.path.exists(os.path.join(host["root"], "usr/local/bin/pgdaemon-agent")) or \
                os.path.exists(os.path.join(host["root"], "etc/systemd/system/pgdaemon-agent.service")):
            raise Failure("a wrong checksum still installed the agent or its unit")
        msg = [l for l in (r.stdout + r.stderr).splitlines() if "FATAL" in l][0]
        log(f"wrong checksum: the boot stops (exit {r.returncode}): {msg[:160]}...")

    def boot(self):
        procs = []
        for h in self.hosts:
            script = rewrite(self.user_data, h["root"], h["imds"], self.a.pg_bin, self.a.endpoint)
            path = os.path.join(h["root"], "var/lib/user-data.sh")
            with open(path, "w") as f:
                f.write(script)
            out = open(os.path.join(h["root"], "var/log/cloud-init-output.log"), "wb")
            procs.append((h, subprocess.Popen(["bash", path], env=self.host_env(h), stdout=out, stderr=subprocess.STDOUT)))
        self.t_boot = time.time()
        log(f"user data started on {', '.join(h['name'] + ' (' + h['ip'] + ')' for h in self.hosts)}")
        for h, p in procs:
            try:
                rc = p.wait(timeout=180)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = "timeout"
            text = open(os.path.join(h["root"], "var/log/cloud-init-output.log")).read()
            if rc != 0:
                raise Failure(f"{h['name']}: the user data failed ({rc}):\n{text[-3000:]}")
            sha = re.search(r"installed the agent, sha256 ([0-9a-f]{64})", text)
            if not sha:
                raise Failure(f"{h['name']}: the user data did not install the agent from S3:\n{text[-2000:]}")
            h["sha256"] = sha.group(1)
        pids = {w: p for w, p in self.standin_pids()}
        for h in self.hosts:
            h["agent_pid"] = pids.get(f"{h['name']} pgdaemon-agent.service")
            if not h["agent_pid"]:
                raise Failure(f"{h['name']}: the agent was not started")
        self.t_agents = time.time()
        log(f"user data done in {self.t_agents - self.t_boot:.1f} s on every host: agent from S3 with sha256 "
            f"{self.hosts[0]['sha256'][:16]}... verified; agents pids {[h['agent_pid'] for h in self.hosts]}")

    # --- observation -----------------------------------------------------------------------------
    def sql(self, host, query, timeout=5):
        sock = os.path.join(host["root"], "run/postgresql")
        r = subprocess.run([os.path.join(self.a.pg_bin, "psql"), "-h", sock, "-p", "5432", "-U", "postgres", "-d", "postgres",
                            "-XAtq", "-c", query], capture_output=True, text=True, timeout=timeout)
        return r.stdout.strip() if r.returncode == 0 else None

    def cluster_doc(self, host):
        try:
            with urllib.request.urlopen(f"http://{host['ip']}:8008/cluster", timeout=2) as r:
                return json.load(r)
        except Exception:
            return None

    def store_items(self):
        ddb = self.aws("dynamodb")
        items = ddb.query(TableName=self.prefix, KeyConditionExpression="#c = :c",
                          ExpressionAttributeNames={"#c": "cluster"}, ExpressionAttributeValues={":c": {"S": self.a.cluster}})["Items"]
        return {i["item"]["S"]: i for i in items}

    def agent_alive(self, h):
        return h.get("agent_pid") and self.alive(h["agent_pid"])

    def health(self, hosts):
        """(primary host, replicas streaming from it) when healthy, else None, with a reason."""
        states = {h["name"]: self.sql(h, "select pg_is_in_recovery()") for h in hosts}
        primaries = [h for h in hosts if states[h["name"]] == "f"]
        if len(primaries) != 1:
            return None, f"writable: {[h['name'] for h in primaries]} (recovery states {states})"
        p = primaries[0]
        replicas = [h for h in hosts if h is not p]
        streaming = [h for h in replicas if self.sql(h, "select status from pg_stat_wal_receiver") == "streaming"]
        if len(streaming) != len(replicas):
            return None, f"streaming replicas: {[h['name'] for h in streaming]} of {[h['name'] for h in replicas]}"
        doc = self.cluster_doc(p)
        if not doc:
            return None, "no /cluster from the primary's agent"
        roles = {m["name"]: (m["role"], m["state"]) for m in doc.get("members", [])}
        if roles.get(p["instance"], (None,))[0] != "leader" or doc.get("primary") != p["instance"]:
            return None, f"/cluster: primary {doc.get('primary')}, roles {roles}"
        if any(roles.get(h["instance"]) != ("replica", "streaming") for h in replicas):
            return None, f"/cluster roles {roles}"
        items = self.store_items()
        lease = items.get("leader", {})
        if "cluster" not in items or json.dumps(lease).find(p["instance"]) < 0:
            return None, f"store items {sorted(items)}; leader {lease}"
        return (p, replicas), "healthy"

    def wait_healthy(self, hosts, timeout, what):
        deadline, reason = time.time() + timeout, ""
        last_said = 0
        while time.time() < deadline:
            for h in hosts:
                if not self.agent_alive(h):
                    raise Failure(f"{h['name']}'s agent died:\n{self.tail(h)}")
            state, reason = self.health(hosts)
            if state:
                return state
            if time.time() - last_said > 10:
                log(f"  waiting for {what}: {reason}")
                last_said = time.time()
            time.sleep(0.5)
        raise Failure(f"no {what} after {timeout} s: {reason}\n" + "\n".join(self.tail(h) for h in hosts))

    def tail(self, h, n=25):
        path = os.path.join(h["root"], "var/log/pgdaemon-agent.service.log")
        lines = open(path, errors="replace").read().splitlines() if os.path.exists(path) else []
        return f"--- {h['name']} agent log (last {n} lines) ---\n" + "\n".join(l[:400] for l in lines[-n:])

    def agent_log(self, h):
        path = os.path.join(h["root"], "var/log/pgdaemon-agent.service.log")
        return open(path, errors="replace").read() if os.path.exists(path) else ""

    # --- the checks ------------------------------------------------------------------------------
    def bootstrap(self):
        (p, replicas) = self.wait_healthy(self.hosts, self.a.bootstrap_timeout, "a healthy 3-node cluster")
        self.t_healthy = time.time()
        inits = [h["name"] for h in self.hosts if "initialised a new database" in self.agent_log(h)]
        if inits != [p["name"]]:
            raise Failure(f"expected exactly one initdb, on the primary {p['name']}: {inits}")
        log(f"HEALTHY {self.t_healthy - self.t_agents:.1f} s after the agents started: {p['name']} ({p['instance']}) "
            f"primary, {', '.join(h['name'] for h in replicas)} streaming; one initdb ({inits[0]}), the others cloned it")
        self.primary, self.replicas = p, replicas
        # pg_hba from [bootstrap]: the roles and networks of the template.
        roles = self.sql(p, "select string_agg(rolname, ',' order by rolname) from pg_roles where rolname in ('replicator','rewinder')")
        if roles != "replicator,rewinder":
            raise Failure(f"the bootstrap did not create the replication and rewind roles: {roles}")
        hba = open(os.path.join(p["root"], "var/lib/pgsql/data/pg_hba.conf")).read()
        if "hostssl replication replicator 127.0.0.0/24 scram-sha-256" not in hba:
            raise Failure(f"pg_hba.conf lacks the peer networks of the template:\n{hba}")

    def admin_login(self):
        """The administrator role with the generated password, over TLS, as a client would."""
        password = self.aws("secretsmanager").get_secret_value(SecretId=f"pgdaemon/{self.a.cluster}/admin-password")["SecretString"]
        p = self.primary
        deadline, out = time.time() + 60, None
        while time.time() < deadline:
            r = subprocess.run([os.path.join(self.a.pg_bin, "psql"), "-XAtq", "-c", "select current_user || ' ' || ssl from pg_stat_ssl where pid = pg_backend_pid()",
                                f"host={p['ip']} port=5432 dbname=postgres user=dbadmin sslmode=require connect_timeout=3"],
                               capture_output=True, text=True, env=dict(os.environ, PGPASSWORD=password), timeout=10)
            out = (r.stdout + r.stderr).strip()
            if r.returncode == 0 and out == "dbadmin true":
                log(f"psql as dbadmin (generated password from Secrets Manager) to {p['ip']}:5432 over TLS: {out}")
                return
            time.sleep(1)
        raise Failure(f"cannot log in as dbadmin on the primary: {out}\n" + open(os.path.join(p["root"], "var/log/pgdaemon-admin-role.service.log")).read()[-1500:])

    def failover(self):
        p = self.primary
        pm = self.postmaster(p)
        kids = self.children(pm) if pm else []
        t = time.time()
        os.kill(p["agent_pid"], signal.SIGKILL)
        if pm:
            os.kill(pm, signal.SIGKILL)
            for k in kids:
                try:
                    os.kill(k, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        log(f"KILLED {p['name']}: agent pid {p['agent_pid']}, postmaster pid {pm} and its {len(kids)} processes (SIGKILL)")
        deadline, reason, last_said = t + self.a.failover_timeout, "", 0
        while time.time() < deadline:
            states = {h["name"]: self.sql(h, "select pg_is_in_recovery()") for h in self.replicas}
            new = [h for h in self.replicas if states[h["name"]] == "f"]
            doc = self.cluster_doc(new[0]) if len(new) == 1 else None
            if len(new) > 1:
                raise Failure(f"two writable primaries: {states}")
            if doc and doc.get("primary") == new[0]["instance"]:
                took = time.time() - t
                state = self.aws("ec2").describe_instances(InstanceIds=[p["instance"]])["Reservations"][0]["Instances"][0]["State"]["Name"]
                log(f"FAILOVER {took:.1f} s after the kill: {new[0]['name']} ({new[0]['instance']}) is primary in term "
                    f"{doc.get('term')}; the old primary's instance is {state} in moto (fenced by the coordinator)")
                self.t_failover = took
                self.new_primary = new[0]
                return
            reason = f"recovery states {states}, /cluster primary {doc.get('primary') if doc else None}"
            if time.time() - last_said > 10:
                log(f"  waiting for a replica to take over: {reason}")
                last_said = time.time()
            time.sleep(0.5)
        raise Failure(f"no replica took over within {self.a.failover_timeout} s: {reason}\n"
                      + "\n".join(self.tail(h) for h in self.replicas) + "\n--- coordinator ---\n"
                      + open(os.path.join(self.a.work, "coordinator.log"), errors="replace").read()[-3000:])

    def survivor_follows(self):
        other = [h for h in self.replicas if h is not self.new_primary][0]
        deadline = time.time() + self.a.failover_timeout
        while time.time() < deadline:
            if self.sql(other, "select status from pg_stat_wal_receiver") == "streaming" and \
                    self.sql(self.new_primary, f"select count(*) from pg_stat_replication where state = 'streaming'") == "1":
                log(f"{other['name']} streams from the new primary {self.new_primary['name']}")
                return
            time.sleep(0.5)
        raise Failure(f"{other['name']} does not stream from the new primary:\n{self.tail(other)}")

    def plain_http_archive(self):
        """moto serves plain HTTP and applies bucket policies to object requests: the backup
        bucket's only statement, deny every request without TLS (aws:SecureTransport false), would
        refuse each upload of the agents' barman-cloud. Removed here, in moto only, once
        assert_terraform_moto.py has checked it (scripts/check-infra runs that first); on AWS the
        nodes reach S3 over HTTPS."""
        if not self.archive:
            return
        s3, bucket = self.aws("s3"), self.archive.group(1)
        try:
            policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
        except s3.exceptions.ClientError:
            return  # a bucket of the user's (backups.bucket_name) without a policy
        stmts = policy["Statement"] if isinstance(policy["Statement"], list) else [policy["Statement"]]
        if not all(x["Effect"] == "Deny" and "aws:SecureTransport" in json.dumps(x.get("Condition", {})) for x in stmts):
            raise Failure(f"the backup bucket's policy holds more than the TLS-only deny; not removing it: {policy}")
        s3.delete_bucket_policy(Bucket=bucket)
        log(f"archive: removed s3://{bucket}'s deny-without-TLS policy in moto (plain HTTP here)")

    def report_archive(self):
        """What the agents' barman-cloud put under the cluster's prefix (informational: what the
        agent archives and when is the agent's tests' subject, not the user data's)."""
        if not self.archive:
            return
        bucket, key_prefix = self.archive.group(1), f"{self.archive.group(2)}/{self.a.cluster}/"
        keys = [o["Key"] for page in self.aws("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key_prefix)
                for o in page.get("Contents", [])]
        outside = [o["Key"] for o in self.aws("s3").list_objects_v2(Bucket=bucket).get("Contents", []) if not o["Key"].startswith(key_prefix)]
        if outside:
            raise Failure(f"objects outside the cluster's prefix {key_prefix} in s3://{bucket}: {outside[:5]}")
        log(f"archive: {len(keys)} objects under s3://{bucket}/{key_prefix} "
            f"({sum('/wals/' in k for k in keys)} in wals/, {sum('/base/' in k for k in keys)} in base/)")

    def run(self):
        self.read_stack()
        self.start_lambda()
        self.make_hosts()
        self.wrong_checksum_stops_the_boot()
        self.plain_http_archive()
        self.boot()
        self.bootstrap()
        self.admin_login()
        self.failover()
        self.survivor_follows()
        self.report_archive()
        invokes = [i for i in self.lam.invocations if "type" in i]
        log(f"coordinator invocations through the local Lambda: {len(invokes)} "
            f"({sorted({i['arn'].rsplit(':', 1)[-1] for i in invokes})})")
        print(f"TIMINGS user_data_s={self.t_agents - self.t_boot:.1f} agents_to_healthy_s={self.t_healthy - self.t_agents:.1f} "
              f"failover_s={self.t_failover:.1f} total_s={time.time() - T0:.1f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", required=True, help="moto server URL")
    ap.add_argument("--region", required=True)
    ap.add_argument("--cluster", required=True)
    ap.add_argument("--tag-key", default="pgdaemon:cluster")
    ap.add_argument("--pg-bin", required=True, help="this machine's PostgreSQL 15 binaries")
    ap.add_argument("--coordinator-bin", required=True, help="the coordinator Lambda's bootstrap executable")
    ap.add_argument("--work", required=True, help="directory for the hosts' trees and logs")
    ap.add_argument("--pids-file", help="every PID started here is appended (last-resort cleanup by the caller)")
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--bootstrap-timeout", type=int, default=90)
    ap.add_argument("--failover-timeout", type=int, default=60)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("run_hosts.py: needs root (the hosts' services run as postgres, as on the nodes)")
        return 1
    os.makedirs(a.work, exist_ok=True)
    a.work = os.path.abspath(a.work)
    a.pids_file = a.pids_file or os.path.join(a.work, "pids")
    run = Run(a)

    def on_signal(signum, _frame):
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        run.run()
        print("user data on three hosts: PASSED")
        return 0
    except Failure as e:
        print(f"FAIL {e}")
        return 1
    finally:
        run.cleanup()


if __name__ == "__main__":
    sys.exit(main())
