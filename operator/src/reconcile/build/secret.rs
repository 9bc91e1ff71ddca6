//! The Secrets the operator generates, each once and kept: the broker Secret `{name}-broker` (the
//! Redis `admin` user's password under `password`, the data-plane users' under
//! `chat-server-password` and `replication-log-password`), the auth Secret `{name}-auth` (the HS256 key under
//! `hmac-key`, only when `spec.auth.secretName` is unset in token mode) and the internal Secret
//! `{name}-internal` (the data plane's shared internal token under `token`).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use chat_wire::redis_acl::RedisRole;

use super::Parent;
use crate::names::{Component, HMAC_KEY_KEY, INTERNAL_TOKEN_KEY, PASSWORD_KEY, role_password_key};
use crate::reconcile::dereference::BrokerPasswords;

/// The broker Secret holding `password` (admin), `chat-server-password` and
/// `replication-log-password`.
pub fn broker(parent: &Parent<'_>, passwords: &BrokerPasswords) -> Secret {
    let mut data = vec![(PASSWORD_KEY, passwords.admin.as_str())];
    data.extend(
        RedisRole::ALL
            .into_iter()
            .map(|role| (role_password_key(role), passwords.of(role))),
    );
    opaque(parent, &parent.names.broker, Component::Broker, &data)
}

/// The `{name}-auth` Secret holding the HS256 key under `hmac-key`.
pub fn auth(parent: &Parent<'_>, key: &str) -> Secret {
    opaque(
        parent,
        &parent.names.auth,
        Component::ChatServer,
        &[(HMAC_KEY_KEY, key)],
    )
}

/// The `{name}-internal` Secret holding the internal token under `token`.
pub fn internal(parent: &Parent<'_>, token: &str) -> Secret {
    let names = &parent.names;
    opaque(
        parent,
        &names.internal,
        Component::ChatServer,
        &[(INTERNAL_TOKEN_KEY, token)],
    )
}

/// An Opaque Secret with the `(key, value)` pairs of `data`. It carries `data`, never
/// `stringData`: the API server stores only `data`, and applying the same bytes again must be a
/// no-op.
fn opaque(parent: &Parent<'_>, name: &str, component: Component, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: parent.metadata(name, component),
        type_: Some("Opaque".into()),
        data: Some(
            data.iter()
                .map(|(key, value)| ((*key).to_owned(), ByteString(value.as_bytes().to_vec())))
                .collect::<BTreeMap<_, _>>(),
        ),
        ..Secret::default()
    }
}
