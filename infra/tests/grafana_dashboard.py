#!/usr/bin/env python3
"""The Grafana dashboard of the agents' metrics (infra/grafana/pgdaemon-agents.json) is valid JSON
and every series its queries name is one node-agent/README.md's metrics table lists (a renamed
or dropped series fails here, not on an operator's screen). Run by scripts/check-infra."""
import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def documented_series(readme: str) -> set[str]:
    """Series names in the first column of the metrics table (the one after '### Metrics')."""
    section = readme.split("### Metrics", 1)[1]
    table = section.split("Patroni series not exported yet", 1)[0]
    names: set[str] = set()
    for line in table.splitlines():
        if not line.startswith("| `pgdaemon_"):
            continue
        cells = line.split("|")
        first, kind = cells[1], cells[2].strip()
        for n in re.findall(r"`(pgdaemon_[a-z0-9_]+)", first):
            names.add(n)
            if kind == "histogram":
                names.update(f"{n}_{s}" for s in ("bucket", "sum", "count"))
    return names


def main() -> int:
    series = documented_series((ROOT / "node-agent/README.md").read_text())
    if len(series) < 20:
        print(f"FAIL: only {len(series)} series read from node-agent/README.md: is the table still there?")
        return 1
    dash = json.loads((ROOT / "infra/grafana/pgdaemon-agents.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    failures = []
    if not exprs:
        failures.append("no queries")
    for e in exprs:
        named = re.findall(r"\bpgdaemon_[a-z0-9_]+", e)
        if not named:
            failures.append(f"names no pgdaemon series: {e}")
        failures += [f"{n} is not in node-agent/README.md's metrics table: {e}" for n in named if n not in series]
    for v in dash.get("templating", {}).get("list", []):
        failures += [f"variable {v['name']}: {n} is not documented" for n in re.findall(r"\bpgdaemon_[a-z0-9_]+", str(v.get("query", ""))) if n not in series]
    for f in failures:
        print(f"FAIL {f}")
    print(f"{len(exprs)} queries over {len(dash['panels'])} panels, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
