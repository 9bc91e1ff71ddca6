//! The broker over TLS (`spec.broker.tls`) on the local cluster: with a Secret holding a
//! certificate for `demo-broker` signed by a throwaway CA, the ChatCluster reaches `Running` (the
//! broker's readiness probe, both replicas and every chat-server connect with `rediss://` and
//! verify the certificate against the Secret's `ca.crt`), messages written through the Service
//! are on every holder, and Redis answers nothing over plain TCP.

use std::collections::BTreeMap;

use anyhow::Result;
use chat_cluster_e2e::harness::Harness;
use chat_cluster_e2e::load::Pace;
use chat_cluster_e2e::scenario::Scenario;
use chat_cluster_operator::crd::BrokerTls;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::PostParams;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};

const CHANNEL: &str = "e2e.tls";
const SECRET: &str = "demo-broker-tls";

/// Creates `demo-broker-tls` in `ns`: a CA, and a server certificate it signs for the names the
/// data plane (`demo-broker`, its Service's full names) and the probe (`127.0.0.1`) dial.
async fn create_tls_secret(h: &Harness, ns: &str) -> Result<()> {
    // Distinct subject names: rcgen's default subject is the same for every certificate, and
    // OpenSSL (the readiness probe's redis-cli) takes a leaf whose subject equals its issuer for
    // a self-signed certificate and refuses it.
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "chat-cluster e2e CA");
    let ca_key = KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate()?;
    let names = vec![
        "demo-broker".to_owned(),
        format!("demo-broker.{ns}.svc"),
        format!("demo-broker.{ns}.svc.cluster.local"),
        "127.0.0.1".to_owned(),
    ];
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "demo-broker");
    let cert = params.signed_by(&key, &issuer)?;
    let data = BTreeMap::from([
        ("tls.crt".to_owned(), ByteString(cert.pem().into_bytes())),
        (
            "tls.key".to_owned(),
            ByteString(key.serialize_pem().into_bytes()),
        ),
        ("ca.crt".to_owned(), ByteString(ca.pem().into_bytes())),
    ]);
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".to_owned()),
        data: Some(data),
        ..Secret::default()
    };
    Api::<Secret>::namespaced(h.client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: run by e2e/run-suite"]
async fn the_data_plane_reaches_the_broker_over_tls_only() {
    let s = Scenario::start_in("tls", create_tls_secret, |spec| {
        spec.replicas = 2;
        spec.broker.tls = Some(BrokerTls {
            secret_name: SECRET.to_owned(),
        });
    })
    .await
    .unwrap();
    let report = s
        .load(CHANNEL, 4, Pace::Count(200), "tls")
        .finish()
        .await
        .unwrap();
    assert_eq!(report.accepted.len(), 200, "{}", report.summary());
    assert_eq!(
        s.check_histories(CHANNEL, &report.accepted).await.unwrap(),
        200
    );

    // Plain TCP gets no answer from Redis; TLS with the CA gets PONG (the admin password is in
    // the container's REDISCLI_AUTH).
    let ns = s.cluster.namespace.clone();
    let exec = |extra: &[&str]| {
        let mut args = vec!["-n", &ns, "exec", "demo-broker-0", "--", "redis-cli"];
        args.extend_from_slice(extra);
        args.extend(["--user", "admin", "-e", "-p", "6379", "ping"]);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let plain = exec(&[]);
    let plain: Vec<&str> = plain.iter().map(String::as_str).collect();
    let answer = s
        .harness
        .kubectl_within(&plain, std::time::Duration::from_secs(20))
        .await;
    assert!(
        !answer
            .as_ref()
            .is_ok_and(|out| out.as_ref().is_some_and(|o| o.contains("PONG"))),
        "plain TCP answered: {answer:?}"
    );
    let tls = exec(&["--tls", "--cacert", "/etc/chat-cluster/redis-tls/ca.crt"]);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let answer = s.harness.kubectl(&tls).await.unwrap();
    assert!(answer.contains("PONG"), "{answer}");
    s.finish().await.unwrap();
}
