//! The `/status` documents as the binaries served them before this crate existed decode, and
//! encode back to the same bytes; a phase this crate does not know, or a missing counter, is a
//! decode error (never a default).

use chat_wire::{NodePhase, NodeStatus, ReplicaPhase, ReplicaStatus};

/// A node's `/status` for internal callers (every field) and for others (no epoch/error), as
/// chat-server serialized its own struct (fields in declaration order).
const NODE_DOCUMENTS: [&str; 3] = [
    r#"{"node_id":"chat-0","phase":"live","position":120,"head":121,"lag":1,"messages":120,"channels":3,"epoch":"1767225600000-0","error":"cut off from the broker","broker_error":"OOM command not allowed when used memory > 'maxmemory'."}"#,
    r#"{"node_id":"chat-1","phase":"catching_up","position":40,"head":100,"lag":60,"messages":40,"channels":1}"#,
    r#"{"node_id":"chat-2","phase":"bootstrapping","position":0,"head":0,"lag":0,"messages":0,"channels":0,"error":"unknown node phase code 7"}"#,
];

/// A replica's `/status` for internal callers and for others, as replication-log served it
/// (through a `serde_json::Value`, so keys in sorted order).
const REPLICA_DOCUMENTS: [&str; 3] = [
    r#"{"broker_loss":"epoch e1 gone","epoch":"1767225600000-0","head":9,"lag":0,"limit":1009,"messages":9,"persisted":9,"phase":"live","replica_id":"log-0"}"#,
    r#"{"head":9,"lag":4,"messages":5,"persisted":5,"phase":"catching_up","replica_id":"log-1"}"#,
    r#"{"broker_error":"OOM","error":"diverged at 7","head":5,"lag":0,"limit":0,"messages":8,"persisted":8,"phase":"diverged","replica_id":"log-2"}"#,
];

#[test]
fn node_documents_decode_and_encode_to_the_same_bytes() {
    for doc in NODE_DOCUMENTS {
        let status: NodeStatus = serde_json::from_str(doc).expect(doc);
        assert_eq!(serde_json::to_string(&status).expect("encode"), doc);
    }
    let full: NodeStatus = serde_json::from_str(NODE_DOCUMENTS[0]).expect("decode");
    assert_eq!(full.phase, NodePhase::Live);
    assert_eq!(full.channels, 3);
    let public = serde_json::to_string(&full.without_details()).expect("encode");
    assert!(
        !public.contains("epoch") && !public.contains("\"error\""),
        "{public}"
    );
    assert!(public.contains("broker_error"), "{public}");
}

#[test]
fn replica_documents_decode_and_encode_to_the_same_bytes() {
    for doc in REPLICA_DOCUMENTS {
        let status: ReplicaStatus = serde_json::from_str(doc).expect(doc);
        let value = serde_json::to_value(&status).expect("encode");
        assert_eq!(serde_json::to_string(&value).expect("encode"), doc);
    }
    let full: ReplicaStatus = serde_json::from_str(REPLICA_DOCUMENTS[0]).expect("decode");
    assert_eq!(full.limit, Some(1009));
    let public = serde_json::to_value(full.without_details()).expect("encode");
    assert_eq!(
        serde_json::to_string(&public).expect("encode"),
        r#"{"head":9,"lag":0,"messages":9,"persisted":9,"phase":"live","replica_id":"log-0"}"#
    );
    let public: ReplicaStatus = serde_json::from_str(REPLICA_DOCUMENTS[1]).expect("decode");
    assert_eq!(public.limit, None, "absent, not 0");
}

/// Every phase a binary can serve, with its wire name and gauge code; anything else fails.
#[test]
fn phases_decode_exactly_or_fail() {
    let node = [
        (NodePhase::Bootstrapping, "bootstrapping", 0),
        (NodePhase::CatchingUp, "catching_up", 1),
        (NodePhase::Live, "live", 2),
    ];
    for (phase, name, code) in node {
        assert_eq!(
            serde_json::to_string(&phase).expect("encode"),
            format!("\"{name}\"")
        );
        assert_eq!(
            serde_json::from_str::<NodePhase>(&format!("\"{name}\"")).expect(name),
            phase
        );
        assert_eq!(
            (phase.as_str(), phase.to_string(), phase.code()),
            (name, name.to_owned(), code)
        );
        assert_eq!(NodePhase::from_code(code), Some(phase));
    }
    assert_eq!(NodePhase::from_code(3), None);
    let replica = [
        (ReplicaPhase::Starting, "starting", 0),
        (ReplicaPhase::Bootstrapping, "bootstrapping", 1),
        (ReplicaPhase::CatchingUp, "catching_up", 2),
        (ReplicaPhase::Live, "live", 3),
        (ReplicaPhase::BrokerLost, "broker_lost", 4),
        (ReplicaPhase::Diverged, "diverged", 5),
    ];
    for (phase, name, code) in replica {
        assert_eq!(
            serde_json::to_string(&phase).expect("encode"),
            format!("\"{name}\"")
        );
        assert_eq!(
            serde_json::from_str::<ReplicaPhase>(&format!("\"{name}\"")).expect(name),
            phase
        );
        assert_eq!(
            (phase.as_str(), phase.to_string(), phase.code()),
            (name, name.to_owned(), code)
        );
    }
    for bad in [
        "\"Live\"",
        "\"ready\"",
        "\"\"",
        "\"broker-lost\"",
        "2",
        "null",
    ] {
        assert!(
            serde_json::from_str::<NodePhase>(bad).is_err(),
            "node phase {bad}"
        );
        assert!(
            serde_json::from_str::<ReplicaPhase>(bad).is_err(),
            "replica phase {bad}"
        );
    }
    // A node phase is not a replica phase and the other way round.
    assert!(serde_json::from_str::<NodePhase>("\"diverged\"").is_err());
}

/// A document with a phase this crate does not know, or without a counter every served document
/// carries, fails to decode: the operator's probe then reports the pod's status unreadable (the
/// rollout gate waits) instead of guessing.
#[test]
fn unknown_phases_and_missing_counters_fail() {
    let bad_node = [
        r#"{"node_id":"n","phase":"ready","position":1,"head":1,"lag":0,"messages":1,"channels":1}"#,
        r#"{"node_id":"n","phase":"starting","position":1,"head":1,"lag":0,"messages":1,"channels":1}"#,
        r#"{"node_id":"n","position":1,"head":1,"lag":0,"messages":1,"channels":1}"#,
        r#"{"node_id":"n","phase":"live","head":1,"lag":0,"messages":1,"channels":1}"#,
        r#"{"node_id":"n","phase":"live","position":-1,"head":1,"lag":0,"messages":1,"channels":1}"#,
    ];
    for doc in bad_node {
        assert!(serde_json::from_str::<NodeStatus>(doc).is_err(), "{doc}");
    }
    let bad_replica = [
        r#"{"head":9,"lag":0,"messages":9,"persisted":9,"phase":"rebuilding","replica_id":"r"}"#,
        r#"{"head":9,"lag":0,"messages":9,"persisted":9,"phase":"Live","replica_id":"r"}"#,
        r#"{"head":9,"lag":0,"messages":9,"phase":"live","replica_id":"r"}"#,
        r#"{"head":9,"lag":0,"messages":9,"persisted":9,"replica_id":"r"}"#,
    ];
    for doc in bad_replica {
        assert!(serde_json::from_str::<ReplicaStatus>(doc).is_err(), "{doc}");
    }
}
