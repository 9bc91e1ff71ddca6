#!/usr/bin/env python3
"""scripts/check-manifests.py: structural checks of rendered operator manifests (scripts/lint-manifests
runs it on each `helm template` render of the chart and on `kubectl kustomize manifests/`).

Usage: check-manifests.py --crd CRD.yaml --policy POLICY.yaml [--mode cluster|namespaced] [--expect-servicemonitor yes|no]
                          [--same-rules-as OTHER.yaml] RENDERED.yaml
Checks (each failure is one line naming the object; exit 1 when any fails):
  - the rendered CustomResourceDefinition equals CRD.yaml (what `chat-cluster-operator crd` prints),
    and the ValidatingAdmissionPolicy and its binding equal POLICY.yaml (what
    `chat-cluster-operator admission-policy` prints),
    apart from the labels and annotations the chart adds;
  - least privilege (issue 11): no rule with a wildcard; no ClusterRole bound by a
    ClusterRoleBinding grants list or watch of Secrets, pods/proxy, pods/status or pod delete (those
    come only from namespaced RoleBindings); namespaced mode renders no ClusterRole or
    ClusterRoleBinding at all, and a Role in each watched namespace;
  - a ServiceMonitor is rendered exactly when expected;
  - with --same-rules-as: the set of (apiGroup, resource, verb, resourceName) grants per binding scope
    equals the other render's (the chart's cluster mode and manifests/ grant the same).
"""
import argparse
import sys

import yaml


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def grants(rules):
    out = set()
    for r in rules or []:
        for g in r.get("apiGroups", [""]):
            for res in r.get("resources", []):
                for v in r.get("verbs", []):
                    for n in r.get("resourceNames", [None]):
                        out.add((g, res, v, n))
    return out


def scoped_grants(docs):
    """(scope, grant) pairs: scope 'cluster' for ClusterRoleBinding'd roles, 'namespace' otherwise."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs
             if d["kind"] in ("Role", "ClusterRole")}
    out = set()
    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        ref = b["roleRef"]
        ns = None if ref["kind"] == "ClusterRole" else b["metadata"].get("namespace")
        role = roles.get((ref["kind"], ns, ref["name"]))
        if role is None:
            continue
        scope = "cluster" if b["kind"] == "ClusterRoleBinding" else "namespace"
        out |= {(scope,) + g for g in grants(role.get("rules"))}
    return out


def name(d):
    ns = d["metadata"].get("namespace")
    return f'{d["kind"]} {ns + "/" if ns else ""}{d["metadata"]["name"]}'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--crd", required=True)
    ap.add_argument("--policy", required=True, help="crds/chatcluster-policy.yaml")
    ap.add_argument("--mode", choices=["cluster", "namespaced"], default="cluster")
    ap.add_argument("--watch", default="", help="comma-separated watched namespaces (namespaced mode)")
    ap.add_argument("--expect-servicemonitor", choices=["yes", "no"], default="no")
    ap.add_argument("--same-rules-as")
    ap.add_argument("rendered")
    a = ap.parse_args()
    docs = load(a.rendered)
    problems = []

    want_crd = load(a.crd)
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    if len(crds) != 1 or len(want_crd) != 1:
        problems.append(f"{a.rendered}: expected one CRD, found {len(crds)}")
    else:
        got = dict(crds[0])
        meta = dict(got["metadata"])
        meta.pop("labels", None)
        meta.pop("annotations", None)
        got["metadata"] = meta
        if got != want_crd[0]:
            problems.append(
                f"{name(crds[0])} differs from {a.crd} (`chat-cluster-operator crd`): the chart's CRD is"
                " crds/chatcluster.yaml by symbolic link; regenerate it with"
                " `cargo run -p chat-cluster-operator -- crd > crds/chatcluster.yaml`"
            )

    want_policy = {(d["kind"], d["metadata"]["name"]): d for d in load(a.policy)}
    got_policy = {}
    for d in docs:
        if d["kind"] in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
            got = dict(d)
            meta = dict(got["metadata"])
            meta.pop("labels", None)
            meta.pop("annotations", None)
            got["metadata"] = meta
            got_policy[(d["kind"], meta["name"])] = got
    if len(want_policy) != 2 or got_policy != want_policy:
        problems.append(
            f"{a.rendered}: the admission policy and its binding differ from {a.policy}"
            " (`chat-cluster-operator admission-policy`), or are missing; regenerate it with"
            " `cargo run -p chat-cluster-operator -- admission-policy > crds/chatcluster-policy.yaml`"
        )

    for d in docs:
        if d["kind"] not in ("Role", "ClusterRole"):
            continue
        for g, res, v, _ in grants(d.get("rules")):
            if "*" in (g, res, v):
                problems.append(f"{name(d)}: wildcard in a rule ({g}/{res} {v})")
    for scope, g, res, v, _ in scoped_grants(docs):
        if scope != "cluster":
            continue
        if res == "secrets" and v in ("list", "watch"):
            problems.append(f"Secrets {v} granted cluster-wide (a ClusterRoleBinding)")
        if res in ("pods/proxy", "pods/status") or (res == "pods" and v == "delete"):
            problems.append(f"{res} {v} granted cluster-wide (a ClusterRoleBinding)")
    if a.mode == "namespaced":
        for d in docs:
            if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                problems.append(f"{name(d)}: namespaced mode must not need any cluster-scoped grant")
        role_ns = {d["metadata"].get("namespace") for d in docs if d["kind"] == "Role"}
        for ns in filter(None, a.watch.split(",")):
            if ns not in role_ns:
                problems.append(f"namespaced mode: no Role in watched namespace {ns}")

    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    if (a.expect_servicemonitor == "yes") != bool(monitors):
        problems.append(f"ServiceMonitor rendered: {bool(monitors)}, expected: {a.expect_servicemonitor}")

    if a.same_rules_as:
        mine = {g[:5] for g in scoped_grants(docs)}
        other = {g[:5] for g in scoped_grants(load(a.same_rules_as))}
        for g in sorted(mine - other, key=str):
            problems.append(f"granted here but not in {a.same_rules_as}: {g}")
        for g in sorted(other - mine, key=str):
            problems.append(f"granted in {a.same_rules_as} but not here: {g}")

    for p in problems:
        print(f"check-manifests: {a.rendered}: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"check-manifests: {a.rendered}: ok ({len(docs)} objects)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
