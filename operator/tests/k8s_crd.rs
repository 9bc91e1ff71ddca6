//! Against a real kube-apiserver: the CRD installs, `kubectl get chatclusters` prints the
//! columns, invalid specs are rejected with exactly one message per problem naming the field
//! (the schema's, or the admission policy's), and the manifests apply.

mod common;

use chat_cluster_operator::crd::ChatCluster;
use common::*;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn crd_installs_and_kubectl_shows_the_columns() {
    let (kc, client, _serial) = k8s_session().await;
    let ns = test_namespace(&client, &kc, "crd-columns").await;
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);
    let created = api
        .create(
            &PostParams::default(),
            &cluster("demo", &ns.name, json!({})),
        )
        .await
        .expect("created");
    // Defaults from the schema.
    assert_eq!(created.spec.replicas, 3);
    assert_eq!(created.spec.image, "chat-cluster/chat-server:0.1.0");
    assert_eq!(created.spec.broker.image, "redis:7.2");
    assert_eq!(created.spec.replication_log.replicas, 2);
    assert_eq!(created.spec.rollout.catch_up_timeout, "5m");
    assert_eq!(created.spec.max_message_bytes, 4096);

    let (ok, out, err) = kubectl(&kc, &["get", "chatclusters", "-n", &ns.name]);
    assert!(ok, "{err}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "PHASE", "MESSAGES", "AGE"],
        "{out}"
    );
    for short in ["cc", "chat"] {
        let (ok, out, err) = kubectl(&kc, &["get", short, "-n", &ns.name, "-o", "name"]);
        assert!(
            ok && out.contains("chatcluster.chat-cluster.io/demo"),
            "{short}: {out} {err}"
        );
    }
}

/// What the API server said was wrong (a 422), without the object's name: for the admission
/// policy the text after `denied request: ` (its problems, `; `-separated), else the schema's
/// text after `is invalid: `.
fn problems(err: kube::Error) -> String {
    let kube::Error::Api(status) = err else {
        panic!("not an API error: {err}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    let text = status.message;
    if let Some((before, problems)) = text.split_once("denied request: ") {
        assert!(
            before.ends_with(
                ": ValidatingAdmissionPolicy 'chatclusters.chat-cluster.io' with binding \
                 'chatclusters.chat-cluster.io' "
            ),
            "{text}"
        );
        return problems.to_owned();
    }
    let (_, after) = text
        .split_once("is invalid: ")
        .unwrap_or_else(|| panic!("no 'is invalid: ' in {text}"));
    after.to_owned()
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn invalid_specs_are_rejected_with_one_message_per_problem_naming_the_field() {
    let (kc, client, _serial) = k8s_session().await;
    let ns = test_namespace(&client, &kc, "crd-invalid").await;
    let api: Api<ChatCluster> = Api::namespaced(client.clone(), &ns.name);
    // Untyped, so that values the typed spec cannot hold (an unknown enum value) reach the API
    // server as written.
    let raw: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::erase::<ChatCluster>(&()),
    );
    let raw_cluster = |name: &str, spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "chat-cluster.io/v1alpha1",
            "kind": "ChatCluster",
            "metadata": {"name": name, "namespace": ns.name},
            "spec": spec,
        }))
        .expect("object")
    };

    // (name, spec, the whole answer: exactly one message per problem, in words)
    let on_create = [
        (
            "negative-replicas",
            json!({"replicas": -1}),
            ".spec.replicas: Invalid value: -1: should be a non-negative integer",
        ),
        (
            "zero-log-replicas",
            json!({"replicationLog": {"replicas": 0}}),
            "spec.replicationLog.replicas: Invalid value: 0: spec.replicationLog.replicas in body \
             should be greater than or equal to 1",
        ),
        (
            "bad-quantity",
            json!({"broker": {"storage": {"size": "lots"}}}),
            "spec.broker.storage.size: \"lots\" is not a positive quantity such as 1Gi (at most \
             8Ei)",
        ),
        (
            "zero-quantity",
            json!({"replicationLog": {"storage": {"size": "0"}}}),
            "spec.replicationLog.storage.size: \"0\" is not a positive quantity such as 1Gi (at \
             most 8Ei)",
        ),
        (
            "bad-duration",
            json!({"rollout": {"catchUpTimeout": "soon"}}),
            "spec.rollout.catchUpTimeout: \"soon\" is not a duration such as 5m or 90s (numbers \
             of at most 5 digits)",
        ),
        (
            "short-duration",
            json!({"rollout": {"catchUpTimeout": "0s"}}),
            "spec.rollout.catchUpTimeout must be at least 1s (it is 0s)",
        ),
        (
            "zero-message-bytes",
            json!({"maxMessageBytes": 0}),
            "spec.maxMessageBytes: Invalid value: 0: spec.maxMessageBytes in body should be \
             greater than or equal to 1",
        ),
        (
            "bad-pull-policy",
            json!({"imagePullPolicy": "Sometimes"}),
            "spec.imagePullPolicy: Unsupported value: \"Sometimes\": supported values: \
             \"Always\", \"IfNotPresent\", \"Never\"",
        ),
        (
            "bad-resources",
            json!({"chatServer": {"resources": {"limits": {"memory": "lots", "cpu": 2}}}}),
            "spec.chatServer.resources.limits.memory: \"lots\" is not a non-negative quantity \
             such as 500m or 1Gi",
        ),
        (
            "bad-interval",
            json!({"monitoring": {"enablePodMonitor": true, "podMonitorInterval": "1m30"}}),
            "spec.monitoring.podMonitorInterval: \"1m30\" is not a Prometheus duration such as \
             30s or 1m30s (whole numbers with the units y, w, d, h, m, s, ms, largest first, more \
             than zero)",
        ),
        // Two problems: two messages, each naming its field.
        (
            "two-problems",
            json!({"broker": {"storage": {"size": "0"}}, "rollout": {"catchUpTimeout": "1ms"}}),
            "spec.broker.storage.size: \"0\" is not a positive quantity such as 1Gi (at most \
             8Ei); spec.rollout.catchUpTimeout must be at least 1s (it is 1ms)",
        ),
        (
            "huge-values",
            json!({"broker": {"storage": {"size": "1e100"}},
                   "rollout": {"catchUpTimeout": "2562048h"},
                   "replicationLog": {"resources": {"requests": {"cpu": "-1"}}}}),
            "spec.broker.storage.size: \"1e100\" is not a positive quantity such as 1Gi (at most \
             8Ei); spec.rollout.catchUpTimeout: \"2562048h\" is not a duration such as 5m or 90s \
             (numbers of at most 5 digits); \
             spec.replicationLog.resources.requests.cpu: \"-1\" is not a non-negative quantity \
             such as 500m or 1Gi",
        ),
        (
            "operator-settings",
            json!({"chatServer": {"env": [{"name": "REDIS_URL", "value": "x"}],
                                  "wsPingIntervalSeconds": 30, "wsPingTimeoutSeconds": 10,
                                  "memoryWindowBytes": 100_000_000_000_i64}}),
            "spec.chatServer.env: REDIS_URL is set by the operator and cannot be overridden \
             (docs/configuration.md); spec.chatServer.wsPingTimeoutSeconds (10) must be more \
             than wsPingIntervalSeconds (30); unset fields count as their defaults (60 and 30); \
             spec.chatServer.memoryWindowBytes: 100000000000 bytes is more than 80 % of the \
             chat-server memory limit; raise spec.chatServer.resources.limits.memory or lower the \
             window",
        ),
        (
            "bad-labels",
            json!({"monitoring": {"enablePodMonitor": true,
                                  "podMonitorLabels": {"bad key!": "x", "team": "a b"}}}),
            "spec.monitoring.podMonitorLabels: \"bad key!\" is not a label key (a name of at most \
             63 letters, digits, \"-\", \"_\" or \".\", beginning and ending with a letter or \
             digit, with an optional DNS prefix and \"/\"); spec.monitoring.podMonitorLabels.team: \
             \"a b\" is not a label value (at most 63 letters, digits, \"-\", \"_\" or \".\", \
             beginning and ending with a letter or digit)",
        ),
    ];
    for (name, spec, want) in on_create {
        let err = raw
            .create(&PostParams::default(), &raw_cluster(name, spec))
            .await
            .expect_err(name);
        let got = problems(err);
        assert_eq!(got, want, "{name}");
        for noise in ["<nil>", "Invalid value: \"string\"", "accessor error", "^("] {
            assert!(!got.contains(noise), "{name}: {got}");
        }
    }
    for bad in ["1abc", "a.b"] {
        let err = raw
            .create(&PostParams::default(), &{
                let mut o = raw_cluster("placeholder", json!({}));
                o.metadata.name = Some(bad.into());
                o
            })
            .await
            .expect_err(bad);
        assert_eq!(
            problems(err),
            format!(
                "metadata.name: \"{bad}\" must start with a lowercase letter, hold only lowercase \
                 letters, digits and \"-\", and end with a letter or digit (the Services the \
                 operator creates are named after it: RFC 1035 labels)"
            )
        );
    }
    // Valid specs that look unusual are accepted: integer quantities, an empty storage class
    // (no class: statically provisioned volumes), a long duration within Go's range.
    for (name, spec) in [
        (
            "int-quantities",
            json!({"chatServer": {"resources": {"limits": {"cpu": 2, "memory": "1Gi"}}}}),
        ),
        (
            "no-class",
            json!({"broker": {"storage": {"size": "1Gi", "storageClassName": ""}}}),
        ),
        (
            "long-timeout",
            json!({"rollout": {"catchUpTimeout": "99999h"}}),
        ),
    ] {
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        raw.create(&dry_run, &raw_cluster(name, spec))
            .await
            .unwrap_or_else(|e| panic!("{name} refused: {e}"));
    }
    let long = "x".repeat(45);
    let err = api
        .create(&PostParams::default(), &cluster(&long, &ns.name, json!({})))
        .await
        .expect_err("long name");
    assert_eq!(
        problems(err),
        format!(
            "metadata.name: \"{long}\" has 45 characters, at most 40 are allowed (child names \
             derive from it)"
        )
    );

    // Transition rules: storage may grow, never shrink; the class is immutable.
    api.create(
        &PostParams::default(),
        &cluster("storage", &ns.name, json!({"broker": {"storage": {"size": "1Gi"}}, "replicationLog": {"storage": {"size": "1Gi", "storageClassName": "slow"}}})),
    )
    .await
    .expect("valid cluster");
    let merge = |spec| Patch::Merge(json!({"spec": spec}));
    let pp = PatchParams::default();
    let transitions = [
        (
            json!({"broker": {"storage": {"size": "512Mi"}}}),
            "spec.broker.storage.size may not shrink (from 1Gi to 512Mi): a volume cannot be \
             made smaller",
        ),
        (
            json!({"replicationLog": {"storage": {"storageClassName": "fast"}}}),
            "spec.replicationLog.storage.storageClassName is immutable (it was slow)",
        ),
        (
            json!({"broker": {"storage": {"storageClassName": "fast"}}}),
            "spec.broker.storage.storageClassName is immutable (it was unset)",
        ),
    ];
    for (change, want) in transitions {
        let err = api
            .patch("storage", &pp, &merge(change.clone()))
            .await
            .expect_err("refused");
        assert_eq!(problems(err), want, "{change}");
    }
    api.patch(
        "storage",
        &pp,
        &merge(json!({"broker": {"storage": {"size": "2Gi"}}})),
    )
    .await
    .expect("growing is allowed");
    // `storageClassName: null` means unset (pruned), as in the contract's example.
    api.create(
        &PostParams::default(),
        &cluster(
            "null-class",
            &ns.name,
            json!({"broker": {"storage": {"size": "1Gi", "storageClassName": null}}}),
        ),
    )
    .await
    .expect("null storage class accepted");
}

#[tokio::test]
#[ignore = "needs a Kubernetes control plane: run by scripts/test's k8s step"]
async fn manifests_build_and_pass_server_side_dry_run() {
    let (kc, _client, _serial) = k8s_session().await;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let (ok, out, err) = kubectl(&kc, &["kustomize", &format!("{root}/manifests")]);
    assert!(ok, "{err}");
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    ] {
        assert!(
            out.contains(&format!("kind: {kind}\n")),
            "manifests lack {kind}"
        );
    }
    assert!(
        !out.contains("\nkind: ChatCluster\n"),
        "installing the operator must not create a cluster"
    );
    // A server-side dry run does not create the namespace, so the namespaced objects would be
    // refused on a fresh cluster: create it for real first (idempotent), then dry-run everything.
    let (ok, _, err) = kubectl(
        &kc,
        &["apply", "-f", &format!("{root}/manifests/namespace.yaml")],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "apply",
            "-k",
            &format!("{root}/manifests"),
            "--dry-run=server",
        ],
    );
    assert!(ok, "{err}");
    let sample = std::fs::read_to_string(format!("{root}/manifests/sample-chatcluster.yaml"))
        .expect("sample");
    let copy = std::fs::read_to_string(format!("{root}/manifests/sample/chatcluster.yaml"))
        .expect("sample copy");
    assert_eq!(
        sample, copy,
        "manifests/sample/chatcluster.yaml must equal manifests/sample-chatcluster.yaml"
    );
    let (ok, _, err) = kubectl(
        &kc,
        &[
            "apply",
            "-f",
            &format!("{root}/manifests/sample-chatcluster.yaml"),
            "--dry-run=server",
        ],
    );
    assert!(ok, "{err}");
}
