//! The NetworkPolicies `{name}-broker`, `{name}-log` and `{name}-chat-server` (ingress only;
//! `spec.networkPolicy`): Redis reachable only from the ChatCluster's chat-server and
//! replication-log pods on the Redis port; the replication log (pages, `/snapshot`, `/status`)
//! only from those pods, its peers, `apiServerFrom` and `replicationLogFrom` on its port; the
//! chat-server port open to any source unless `chatServerFrom` lists them. Every other port of
//! the selected pods is closed. Peers without a namespace selector are the ChatCluster's own
//! namespace (NetworkPolicy semantics), so a same-named ChatCluster elsewhere is no peer.
//!
//! An ingress rule with no `from` admits every source, so a rule whose peer list would be empty
//! is left out instead (no rule: nothing but the pod's own node is admitted). "Any source" and
//! "no rule" are spelled as empty lists (`from: []`, `ingress: []`), which mean the same as the
//! absent fields the API server stores for them, so that a change to them differs from the live
//! object (`apply::contains`). Empty lists and maps in the user's peers are dropped, as the API
//! server drops them, so the live object contains the built one and a steady cluster sees no
//! re-apply.

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Parent;
use crate::names::{CHAT_PORT, Component, LOG_PORT, REDIS_PORT};

/// `{name}-broker`: the Redis port from the chat-server and replication-log pods only.
pub fn broker(parent: &Parent<'_>) -> NetworkPolicy {
    let from = vec![
        own_pods(parent, Component::ChatServer),
        own_pods(parent, Component::ReplicationLog),
    ];
    policy(
        parent,
        Component::Broker,
        &parent.names.broker,
        REDIS_PORT,
        Some(from),
    )
}

/// `{name}-log`: the replication-log port from the chat-server pods, the other log replicas,
/// `apiServerFrom` and `replicationLogFrom`.
pub fn replication_log(parent: &Parent<'_>) -> NetworkPolicy {
    let spec = &parent.cluster.spec.network_policy;
    let mut from = vec![
        own_pods(parent, Component::ChatServer),
        own_pods(parent, Component::ReplicationLog),
    ];
    from.extend(spec.api_server_from.iter().map(normalized));
    from.extend(spec.replication_log_from.iter().map(normalized));
    policy(
        parent,
        Component::ReplicationLog,
        &parent.names.log,
        LOG_PORT,
        Some(from),
    )
}

/// `{name}-chat-server`: the chat-server port from any source, or from `chatServerFrom` and
/// `apiServerFrom` when `chatServerFrom` is set.
pub fn chat_server(parent: &Parent<'_>) -> NetworkPolicy {
    let spec = &parent.cluster.spec.network_policy;
    let from = spec.chat_server_from.as_ref().map(|listed| {
        listed
            .iter()
            .chain(&spec.api_server_from)
            .map(normalized)
            .collect()
    });
    policy(
        parent,
        Component::ChatServer,
        &parent.names.chat_server,
        CHAT_PORT,
        from,
    )
}

/// The ingress policy `name` selecting `component`'s pods, admitting TCP `port` from `from`
/// (None: from any source; an empty list: from nobody, so no rule at all).
fn policy(
    parent: &Parent<'_>,
    component: Component,
    name: &str,
    port: u16,
    from: Option<Vec<NetworkPolicyPeer>>,
) -> NetworkPolicy {
    let rules = match from {
        Some(peers) if peers.is_empty() => vec![],
        from => vec![NetworkPolicyIngressRule {
            from: Some(from.unwrap_or_default()),
            ports: Some(vec![NetworkPolicyPort {
                port: Some(IntOrString::Int(i32::from(port))),
                protocol: Some("TCP".into()),
                ..NetworkPolicyPort::default()
            }]),
        }],
    };
    NetworkPolicy {
        metadata: parent.metadata(name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(parent.selector(component)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(rules),
            ..NetworkPolicySpec::default()
        }),
    }
}

/// The pods of `component` of this ChatCluster (same namespace).
fn own_pods(parent: &Parent<'_>, component: Component) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(parent.selector(component)),
        ..NetworkPolicyPeer::default()
    }
}

/// `peer` without empty lists and maps, which the API server drops from what it stores (an empty
/// selector `{}` stays: it means "all").
fn normalized(peer: &NetworkPolicyPeer) -> NetworkPolicyPeer {
    fn selector(s: &LabelSelector) -> LabelSelector {
        LabelSelector {
            match_labels: s.match_labels.clone().filter(|m| !m.is_empty()),
            match_expressions: s
                .match_expressions
                .clone()
                .filter(|e| !e.is_empty())
                .map(|exprs| {
                    exprs
                        .into_iter()
                        .map(|mut e| {
                            e.values = e.values.filter(|v| !v.is_empty());
                            e
                        })
                        .collect()
                }),
        }
    }
    NetworkPolicyPeer {
        ip_block: peer.ip_block.as_ref().map(|b| IPBlock {
            cidr: b.cidr.clone(),
            except: b.except.clone().filter(|e| !e.is_empty()),
        }),
        namespace_selector: peer.namespace_selector.as_ref().map(selector),
        pod_selector: peer.pod_selector.as_ref().map(selector),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ChatCluster;
    use crate::reconcile::validate::validate;
    use serde_json::{Value, json};

    fn peer(v: Value) -> NetworkPolicyPeer {
        serde_json::from_value(v).expect("peer")
    }

    fn own(component: &str) -> Value {
        json!({"podSelector": {"matchLabels": {
            "app.kubernetes.io/component": component,
            "app.kubernetes.io/instance": "demo",
        }}})
    }

    /// Each policy's selected pods and its ingress rules, for every shape of `spec.networkPolicy`.
    #[test]
    fn policies_admit_exactly_the_listed_sources() {
        let tcp = |port: u16| json!([{"port": port, "protocol": "TCP"}]);
        let prometheus = json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        });
        let control_plane = json!({"ipBlock": {"cidr": "192.0.2.10/32"}});
        let ingress = json!({"namespaceSelector": {"matchLabels": {"team": "edge"}}});
        // (case, chatServerFrom, replicationLogFrom, apiServerFrom,
        //  broker ingress, log ingress, chat-server ingress)
        type Case = (
            &'static str,
            Option<Vec<Value>>,
            Vec<Value>,
            Vec<Value>,
            Value,
            Value,
            Value,
        );
        let table: Vec<Case> = vec![
            (
                "defaults: chat-server open, the rest from the cluster's own pods",
                None,
                vec![],
                vec![],
                json!([{"from": [own("chat-server"), own("replication-log")], "ports": tcp(6379)}]),
                json!([{"from": [own("chat-server"), own("replication-log")], "ports": tcp(8090)}]),
                json!([{"from": [], "ports": tcp(8080)}]),
            ),
            (
                "monitoring and a remote API server reach the log; chat-server still open",
                None,
                vec![prometheus.clone()],
                vec![control_plane.clone()],
                json!([{"from": [own("chat-server"), own("replication-log")], "ports": tcp(6379)}]),
                json!([{"from": [own("chat-server"), own("replication-log"), control_plane, prometheus], "ports": tcp(8090)}]),
                json!([{"from": [], "ports": tcp(8080)}]),
            ),
            (
                "chat-server restricted: the listed peers and the API server",
                Some(vec![ingress.clone()]),
                vec![],
                vec![control_plane.clone()],
                json!([{"from": [own("chat-server"), own("replication-log")], "ports": tcp(6379)}]),
                json!([{"from": [own("chat-server"), own("replication-log"), control_plane], "ports": tcp(8090)}]),
                json!([{"from": [ingress, control_plane], "ports": tcp(8080)}]),
            ),
            (
                "chat-server closed: an empty list is no rule, not a rule with an empty `from` (= all)",
                Some(vec![]),
                vec![],
                vec![],
                json!([{"from": [own("chat-server"), own("replication-log")], "ports": tcp(6379)}]),
                json!([{"from": [own("chat-server"), own("replication-log")], "ports": tcp(8090)}]),
                json!([]),
            ),
        ];
        for (case, chat_from, log_from, api_from, broker_in, log_in, chat_in) in table {
            let mut cluster = ChatCluster::test();
            let np = &mut cluster.spec.network_policy;
            np.chat_server_from = chat_from.map(|l| l.into_iter().map(peer).collect());
            np.replication_log_from = log_from.into_iter().map(peer).collect();
            np.api_server_from = api_from.into_iter().map(peer).collect();
            let validated = validate(&cluster).expect("valid");
            let parent = Parent::of(&validated);
            for (policy, component, name, want) in [
                (broker(&parent), "broker", "demo-broker", broker_in),
                (
                    replication_log(&parent),
                    "replication-log",
                    "demo-log",
                    log_in,
                ),
                (
                    chat_server(&parent),
                    "chat-server",
                    "demo-chat-server",
                    chat_in,
                ),
            ] {
                let policy = json!(policy);
                assert_eq!(policy["metadata"]["name"], name, "{case}");
                assert_eq!(
                    policy["spec"]["podSelector"],
                    own(component)["podSelector"],
                    "{case}: {name}"
                );
                assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]), "{case}");
                assert_eq!(policy["spec"]["ingress"], want, "{case}: {name}");
                assert!(policy["spec"].get("egress").is_none(), "{case}: {name}");
            }
        }
    }

    /// Empty lists and maps in a user's peer are dropped (the API server stores them without),
    /// an empty selector `{}` ("every pod" / "every namespace") is kept.
    #[test]
    fn peers_are_normalized_like_the_api_server_stores_them() {
        let cases = [
            (
                json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": []}}),
                json!({"ipBlock": {"cidr": "10.0.0.0/8"}}),
            ),
            (
                json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}),
                json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}),
            ),
            (
                json!({"namespaceSelector": {}, "podSelector": {"matchLabels": {}, "matchExpressions": []}}),
                json!({"namespaceSelector": {}, "podSelector": {}}),
            ),
            (
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": []}]}}),
                json!({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists"}]}}),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(json!(normalized(&peer(input.clone()))), want, "{input}");
        }
    }
}
