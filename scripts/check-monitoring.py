#!/usr/bin/env python3
"""scripts/check-monitoring.py: every metric the monitoring files name is one the code registers.

Reads the registrations (`Registry::with_prefix("P")` + `registry.register("NAME", ...)`) of
chat-server/src/node/metrics.rs, chat-server/src/log/metrics.rs and operator/src/metrics.rs (and the
sets both data-plane binaries register, in chat-server/src/serve.rs and limits.rs), and
every `chat_server_*`, `replication_log_*` and `chat_cluster_operator_*` name in
docs/monitoring/grafana-dashboard.json, docs/monitoring/prometheus-rules.yaml and docs/monitoring.md
(exposition suffixes _total, _bucket, _sum, _count removed). Exits 1 naming each unknown metric, so
a renamed metric cannot silently empty a panel or disarm an alert. Also checks that the dashboard is
JSON and the rules file YAML. Run from the repository root (scripts/lint-manifests does).
"""
import json
import re
import sys

import yaml

SOURCES = ["chat-server/src/node/metrics.rs", "chat-server/src/log/metrics.rs", "operator/src/metrics.rs"]
# Metric sets both data-plane binaries register into their own registry (connections, limits).
SHARED = ["chat-server/src/serve.rs", "chat-server/src/limits.rs"]
USERS = ["docs/monitoring/grafana-dashboard.json", "docs/monitoring/prometheus-rules.yaml", "docs/monitoring.md"]
PREFIXES = ("chat_server", "replication_log", "chat_cluster_operator")


def registered():
    names = set()
    for path in SOURCES:
        text = open(path).read()
        prefix = re.search(r'with_prefix\("([a-z_]+)"\)', text).group(1)
        for name in re.findall(r'register\(\s*"([a-z_]+)"', text):
            names.add(f"{prefix}_{name}")
    for path in SHARED:
        for name in re.findall(r'register\(\s*"([a-z_]+)"', open(path).read()):
            names.update(f"{prefix}_{name}" for prefix in ("chat_server", "replication_log"))
    return names


def main():
    known = registered()
    json.load(open(USERS[0]))
    list(yaml.safe_load_all(open(USERS[1])))
    pattern = re.compile(r"\b(?:%s)_[a-z0-9_]+" % "|".join(PREFIXES))
    problems = []
    for path in USERS:
        for used in sorted(set(pattern.findall(open(path).read()))):
            base = re.sub(r"_(total|bucket|sum|count)$", "", used)
            if used not in known and base not in known:
                problems.append(f"{path}: {used} is not a metric the code registers")
    for p in problems:
        print(f"check-monitoring: {p}", file=sys.stderr)
    if not problems:
        print(f"check-monitoring: {len(USERS)} files use only the {len(known)} registered metrics", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
