//! The Services: `{name}-broker` (Redis), `{name}-log` (replication-log clients),
//! `{name}-log-headless` (the log StatefulSet's governing Service, one DNS name per replica) and
//! `{name}-chat-server` (the chat API).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Parent;
use crate::crd::ServiceSettings;
use crate::names::{CHAT_PORT, Component, LOG_PORT, REDIS_PORT, selector_labels};

/// The broker's ClusterIP Service on `redis` (6379).
pub fn broker(parent: &Parent<'_>) -> Service {
    cluster_ip(
        parent,
        &parent.names.broker,
        Component::Broker,
        "redis",
        REDIS_PORT,
        &parent.cluster.spec.broker.service,
    )
}

/// The replication log's client Service on `http` (8090).
pub fn log(parent: &Parent<'_>) -> Service {
    cluster_ip(
        parent,
        &parent.names.log,
        Component::ReplicationLog,
        "http",
        LOG_PORT,
        &parent.cluster.spec.replication_log.service,
    )
}

/// The chat-server Service on `http` (8080).
pub fn chat_server(parent: &Parent<'_>) -> Service {
    cluster_ip(
        parent,
        &parent.names.chat_server,
        Component::ChatServer,
        "http",
        CHAT_PORT,
        &parent.cluster.spec.chat_server.service,
    )
}

/// The headless governing Service of the log StatefulSet. It publishes replicas before they are
/// ready, so a replica catching up can reach its peers by name.
pub fn log_headless(parent: &Parent<'_>) -> Service {
    let name = &parent.names.log_headless;
    Service {
        metadata: parent.metadata(name, Component::ReplicationLog),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(
                &parent.cluster.name,
                Component::ReplicationLog,
            )),
            ports: Some(vec![port("http", LOG_PORT)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A Service of `settings.type` (ClusterIP by default) with `settings.annotations`, in front of
/// one component's pods, on one named port.
fn cluster_ip(
    parent: &Parent<'_>,
    name: &str,
    component: Component,
    port_name: &str,
    number: u16,
    settings: &ServiceSettings,
) -> Service {
    let mut metadata = parent.metadata(name, component);
    metadata.annotations = (!settings.annotations.is_empty()).then(|| settings.annotations.clone());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(settings.type_.as_str().into()),
            selector: Some(selector_labels(&parent.cluster.name, component)),
            ports: Some(vec![port(port_name, number)]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A TCP Service port `number` named `name`, targeting the container port of the same name.
fn port(name: &str, number: u16) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: i32::from(number),
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}
