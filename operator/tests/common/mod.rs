//! Shared harness of the integration tests against a real kube-apiserver: finding the cluster
//! (`CHAT_CLUSTER_KUBECONFIG`; a test that runs without it fails, it never passes by skipping),
//! the CRD, the operator as a child process and metrics scraping. Namespaces, kubectl, free
//! ports and polling come from the shared `chat-test-support` crate.
//!
//! Every test that needs the cluster is `#[ignore = "needs a Kubernetes control plane: ..."]`: a
//! plain `cargo test` lists it as ignored instead of reporting a pass that ran nothing. scripts/test's k8s step brings the control
//! plane up and runs them with `cargo test -p chat-cluster-operator -- --include-ignored`.
#![allow(dead_code)]

pub mod testhost;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_cluster_operator::crd::{self, ChatCluster};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serializes the tests of one binary: they share one API server and operators watch all
/// namespaces, so the write-counting tests must not see other tests' work.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The kubeconfig of the cluster under test (`CHAT_CLUSTER_KUBECONFIG`). Panics, failing the
/// test, when it is unset: a test that needs a cluster never passes without one.
pub fn kubeconfig() -> PathBuf {
    match std::env::var_os("CHAT_CLUSTER_KUBECONFIG") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "CHAT_CLUSTER_KUBECONFIG is not set: this test needs a Kubernetes control plane. \
             scripts/test's k8s step provides one; by hand: `eval \"$(e2e/cluster up --control-plane-only)\"` \
             then `CHAT_CLUSTER_KUBECONFIG=$KUBECONFIG cargo test -p chat-cluster-operator -- --include-ignored`"
        ),
    }
}

/// The start of every test here: the cluster's kubeconfig, the lock that serializes the tests of
/// one binary (hold it to the end), and a client, with the CRD installed. Fails the test when no
/// cluster is configured or the API server does not answer.
pub async fn k8s_session() -> (PathBuf, Client, tokio::sync::MutexGuard<'static, ()>) {
    let kc = kubeconfig();
    let serial = SERIAL.lock().await;
    let client = client(&kc).await;
    if let Err(e) = client.apiserver_version().await {
        panic!(
            "the API server of CHAT_CLUSTER_KUBECONFIG={} does not answer: {e}",
            kc.display()
        );
    }
    install_crd(&client).await;
    (kc, client, serial)
}

/// A client for the kubeconfig.
pub async fn client(kubeconfig: &Path) -> Client {
    chat_test_support::k8s::client(kubeconfig)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

pub use chat_test_support::free_port;
pub use chat_test_support::k8s::TestNamespace;

/// The Events (events.k8s.io) of `ns` matching `field_selector` (e.g. `reason=X`; empty: all),
/// each as one line of `fields` (jsonpath expressions such as `{.reason} {.note}`): (whether
/// kubectl succeeded, the lines).
pub fn events_lines(
    kubeconfig: &Path,
    ns: &str,
    field_selector: &str,
    fields: &str,
) -> (bool, String) {
    let template = format!("jsonpath={{range .items[*]}}{fields}{{\"\\n\"}}{{end}}");
    let mut args = vec!["get", "events.events.k8s.io", "-n", ns, "-o", &template];
    if !field_selector.is_empty() {
        args.extend(["--field-selector", field_selector]);
    }
    let (ok, out, _) = kubectl(kubeconfig, &args);
    (ok, out)
}

/// Runs kubectl; returns (success, stdout, stderr).
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let out = chat_test_support::kubectl(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Installs (server-side applies) the CRD and waits until it is Established.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "chatclusters.chat-cluster.io",
        &PatchParams::apply("chat-cluster-tests").force(),
        &Patch::Apply(crd::crd().expect("the CRD builds")),
    )
    .await
    .expect("CRD applies");
    wait_established(client, "chatclusters.chat-cluster.io").await;
    // Discovery catches up a moment after Established.
    tokio::time::sleep(Duration::from_millis(500)).await;
    install_admission_policy(client).await;
}

/// Waits (20 s at most) until the CustomResourceDefinition `name` is `Established`.
pub async fn wait_established(client: &Client, name: &str) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_for(
        &format!("CRD {name} Established"),
        Duration::from_secs(20),
        || async {
            let crd = crds.get(name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await;
}

/// Applies the ChatCluster admission policy and its binding (`crds/chatcluster-policy.yaml`, as
/// `chat-cluster-operator admission-policy` renders them) and waits until the API server
/// enforces it: a server-side dry run of a ChatCluster with `catchUpTimeout: 0s` is refused by it.
pub async fn install_admission_policy(client: &Client) {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let params = PatchParams::apply("chat-cluster-tests").force();
    let policy = crd::admission::policy();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .patch(crd::admission::POLICY_NAME, &params, &Patch::Apply(policy))
        .await
        .expect("admission policy applies");
    let binding = crd::admission::binding();
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .patch(crd::admission::POLICY_NAME, &params, &Patch::Apply(binding))
        .await
        .expect("admission policy binding applies");
    let probe = cluster(
        "policy-probe",
        "default",
        serde_json::json!({"rollout": {"catchUpTimeout": "0s"}}),
    );
    let clusters: Api<ChatCluster> = Api::namespaced(client.clone(), "default");
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..kube::api::PostParams::default()
    };
    wait_for(
        "the admission policy in force",
        Duration::from_secs(20),
        || async {
            match clusters.create(&dry_run, &probe).await {
                Err(kube::Error::Api(e)) if e.message.contains("ValidatingAdmissionPolicy") => {
                    Some(())
                }
                _ => None,
            }
        },
    )
    .await;
}

/// A namespace `{prefix}-{pid}` for one test (a leftover of that name from an earlier run is
/// deleted first), deleted when dropped.
pub async fn test_namespace(client: &Client, kubeconfig: &Path, prefix: &str) -> TestNamespace {
    let name = format!("{prefix}-{}", std::process::id() % 100000);
    TestNamespace::create(client, kubeconfig, &name, &[], Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// An operator child process, killed when dropped.
pub struct Operator {
    pub child: Child,
    pub identity: String,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl Operator {
    /// Starts `chat-cluster-operator run` electing on lease `lease_ns/lease`.
    pub fn start(kubeconfig: &Path, lease_ns: &str, lease: &str, identity: &str) -> Operator {
        Operator::start_with_env(kubeconfig, lease_ns, lease, identity, &[])
    }

    /// [`Operator::start`] with extra environment (e.g. `WATCH_NAMESPACES`).
    pub fn start_with_env(
        kubeconfig: &Path,
        lease_ns: &str,
        lease: &str,
        identity: &str,
        env: &[(&str, &str)],
    ) -> Operator {
        let metrics_port = free_port();
        let log = std::env::temp_dir().join(format!(
            "chat-cluster-operator-{identity}-{}.log",
            std::process::id()
        ));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_chat-cluster-operator"))
            .args([
                "run",
                "--metrics-listen",
                &format!("127.0.0.1:{metrics_port}"),
            ])
            .args([
                "--namespace",
                lease_ns,
                "--lease-name",
                lease,
                "--identity",
                identity,
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                "info,chat_cluster_operator=debug,kube_runtime=warn",
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("operator starts");
        Operator {
            child,
            identity: identity.into(),
            metrics_port,
            log,
        }
    }

    /// Starts an operator and waits until it leads.
    pub async fn start_leading(
        client: &Client,
        kubeconfig: &Path,
        lease_ns: &str,
        identity: &str,
    ) -> Operator {
        let op = Operator::start(kubeconfig, lease_ns, "chat-cluster-operator", identity);
        wait_for_leader(
            client,
            lease_ns,
            "chat-cluster-operator",
            identity,
            Duration::from_secs(30),
        )
        .await;
        op
    }

    /// Scrapes one metric value (sum over label sets matching `name{...}` prefix).
    pub async fn metric(&self, name: &str) -> f64 {
        let text = http_get(self.metrics_port, "/metrics")
            .await
            .unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// The operator's log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `identity` holds the lease.
pub async fn wait_for_leader(
    client: &Client,
    ns: &str,
    lease: &str,
    identity: &str,
    within: Duration,
) {
    let api: Api<Lease> = Api::namespaced(client.clone(), ns);
    wait_for(&format!("{identity} leads"), within, || async {
        let l = api.get_opt(lease).await.ok()??;
        (l.spec?.holder_identity.as_deref() == Some(identity)).then_some(())
    })
    .await;
}

/// Minimal HTTP/1.0 GET on 127.0.0.1:port; the body.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// Polls `check` every 100 ms until it returns Some ([`chat_test_support::poll`]), panicking after
/// `within`.
pub async fn wait_for<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    chat_test_support::poll(what, within, Duration::from_millis(100), || {
        let next = check();
        async move { Ok::<_, std::convert::Infallible>(next.await) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A ChatCluster object named `name` in `ns` with `spec` (JSON).
pub fn cluster(name: &str, ns: &str, spec: serde_json::Value) -> ChatCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "chat-cluster.io/v1alpha1",
        "kind": "ChatCluster",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .expect("cluster")
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

/// Helm: `$HELM`, else `e2e/helm/build` (cached under ~/.cache/chat-cluster; builds it from its
/// Go module on first use).
pub fn helm_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HELM") {
        return p.into();
    }
    let out = Command::new(repo_root().join("e2e/helm/build"))
        .stderr(Stdio::inherit())
        .output()
        .expect("e2e/helm/build runs");
    assert!(out.status.success(), "e2e/helm/build failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `helm template RELEASE manifests/helm/chat-cluster-operator --namespace NS ARGS...`: the YAML.
pub fn render_chart(release: &str, namespace: &str, args: &[&str]) -> String {
    let out = Command::new(helm_path())
        .args(["template", release])
        .arg(repo_root().join("manifests/helm/chat-cluster-operator"))
        .args(["--namespace", namespace])
        .args(args)
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("helm prints UTF-8")
}

/// `kubectl apply -f -` (or `delete`, with `verb`) of `yaml`; panics with kubectl's stderr on failure.
pub fn kubectl_stdin(kubeconfig: &Path, verb: &str, yaml: &str) {
    let mut child = chat_test_support::kubectl(kubeconfig)
        .args([verb, "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("kubectl stdin");
    let out = child.wait_with_output().expect("kubectl finishes");
    assert!(
        out.status.success(),
        "kubectl {verb} -f - failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A kubeconfig for the ServiceAccount `namespace/name`: the cluster of `kubeconfig` and a token
/// from the TokenRequest API (`kubectl create token`), so whatever uses it has exactly the
/// account's RBAC. Written next to the test's temp files; the path.
pub fn service_account_kubeconfig(kubeconfig: &Path, namespace: &str, name: &str) -> PathBuf {
    let (ok, token, err) = kubectl(
        kubeconfig,
        &["create", "token", name, "-n", namespace, "--duration=2h"],
    );
    assert!(ok, "kubectl create token {namespace}/{name}: {err}");
    let mut kc = kube::config::Kubeconfig::read_from(kubeconfig).expect("kubeconfig reads");
    let user = format!("system:serviceaccount:{namespace}:{name}");
    kc.auth_infos = vec![kube::config::NamedAuthInfo {
        name: user.clone(),
        auth_info: Some(kube::config::AuthInfo {
            token: Some(token.trim().to_owned().into()),
            ..Default::default()
        }),
        other: Default::default(),
    }];
    for context in &mut kc.contexts {
        if let Some(c) = context.context.as_mut() {
            c.user = Some(user.clone());
        }
    }
    let path = std::env::temp_dir().join(format!(
        "kubeconfig-{namespace}-{name}-{}",
        std::process::id()
    ));
    std::fs::write(
        &path,
        serde_yaml::to_string(&kc).expect("kubeconfig serializes"),
    )
    .expect("kubeconfig written");
    path
}

/// `kubectl auth can-i VERB RESOURCE [--subresource SUB] [-n NS | -A] --as USER`: whether the API
/// server allows it. `resource` may name a subresource as `pods/proxy` (kubectl itself would read
/// that as the pod named `proxy`).
pub fn can_i(kubeconfig: &Path, user: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let (resource, subresource) = match resource.split_once('/') {
        Some((r, sub)) => (r, Some(sub)),
        None => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource, "--as", user];
    if let Some(sub) = subresource {
        args.extend(["--subresource", sub]);
    }
    match ns {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("-A"),
    }
    let (_, out, _) = kubectl(kubeconfig, &args);
    out.trim() == "yes"
}
