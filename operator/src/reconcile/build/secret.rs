//! The broker Secret `{name}-broker`: the Redis password under key `password`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use super::Parent;
use crate::names::{Component, PASSWORD_KEY};

/// The broker Secret holding `password`. It carries `data`, never `stringData`: the API server
/// stores only `data`, and applying the same bytes again must be a no-op.
pub fn broker(parent: &Parent<'_>, password: &str) -> Secret {
    Secret {
        metadata: parent.metadata(&parent.names.broker, Component::Broker),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            PASSWORD_KEY.to_owned(),
            ByteString(password.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}
