//! The ChatCluster's admission checks that the OpenAPI schema cannot express: quantities,
//! durations, the name length and the transition rules (a storage size may grow but never
//! shrink, a storage class never changes). They run as one `ValidatingAdmissionPolicy` with its
//! binding (`admissionregistration.k8s.io/v1`, Kubernetes ≥ 1.30), not as CEL rules inside the
//! CRD, because of how the API server words failures: a CRD rule's error reads
//! `Invalid value: "string": …` (the schema type in place of the value), and any schema error
//! in an object whose CRD holds rules adds `<nil>: Invalid value: null: some validation rules
//! were not checked …`. The policy instead gathers every problem into one list and answers with
//! one message per problem, each naming the field and the value in words:
//!
//! ```text
//! The chatclusters "demo" is invalid: : ValidatingAdmissionPolicy 'chatclusters.chat-cluster.io'
//! with binding 'chatclusters.chat-cluster.io' denied request: spec.broker.storage.size: "lots"
//! is not a positive quantity such as 1Gi
//! ```
//!
//! The API server evaluates the policy only for objects that pass the schema, so a schema error
//! (wrong type, enum, range) is reported alone. The operator checks the same values again
//! ([`crate::reconcile::validate`]) for clusters where the policy is not installed.
//!
//! CEL reference: <https://kubernetes.io/docs/reference/access-authn-authz/validating-admission-policy/>;
//! `isQuantity`/`quantity` are Kubernetes' quantity library.

use k8s_openapi::api::admissionregistration::v1::{
    MatchResources, NamedRuleWithOperations, ValidatingAdmissionPolicy,
    ValidatingAdmissionPolicyBinding, ValidatingAdmissionPolicyBindingSpec,
    ValidatingAdmissionPolicySpec, Validation, Variable,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::settings::{CHAT_SERVER_MEMORY_LIMIT, MAX_WINDOW_PERCENT_OF_LIMIT};
use super::{GROUP, MAX_NAME_LEN};
use crate::names::{BROKER_ENV, CHAT_SERVER_ENV, LOG_ENV};

/// Name of the policy and of its binding.
pub const POLICY_NAME: &str = "chatclusters.chat-cluster.io";

/// Go duration syntax as `time.ParseDuration` and CEL's `duration()` accept it, unsigned, with
/// numbers of at most 5 digits: within the 32 characters the schema allows that stays below
/// 500,000 h, far from the 2,562,047 h where a Go duration overflows (CEL's `duration()` would
/// then fail to evaluate instead of answering).
const DURATION_RE: &str = r"^([0-9]{1,5}(\\.[0-9]{1,9})?(ns|us|µs|ms|s|m|h))+$";

/// A DNS-1035 label (RFC 1035 §2.3.1, as Kubernetes checks Service names): the operator names
/// Services after the ChatCluster.
const DNS_1035_RE: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// A label key (an optional DNS-subdomain prefix and `/`, then a name) and a label value, as
/// Kubernetes validates them (`IsQualifiedName`, `IsValidLabelValue`).
const LABEL_KEY_RE: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";
const LABEL_VALUE_RE: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";

/// The largest storage size admitted: 8 EiB (2^63 bytes), past any disk and what a quantity's
/// integer value holds.
pub const MAX_STORAGE: &str = "8Ei";

/// A Prometheus duration as the Prometheus Operator's PodMonitor schema accepts it: whole
/// numbers, each unit at most once, largest first.
const PROMETHEUS_DURATION_RE: &str =
    r"^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$";

/// `has(root.a) && has(root.a.b) && …` for `path` = `["a", "b", …]`.
fn present(root: &str, path: &[&str]) -> String {
    (1..=path.len())
        .map(|n| format!("has({root}.{})", path[..n].join(".")))
        .collect::<Vec<_>>()
        .join(" && ")
}

/// `root.a.b`.
fn at(root: &str, path: &[&str]) -> String {
    format!("{root}.{}", path.join("."))
}

/// A CEL expression yielding a list of messages: `[]` when `ok` holds, else `[message]`.
fn check(ok: &str, message: &str) -> String {
    format!("(({ok}) ? [] : [{message}])")
}

/// Storage size and class checks of one component (`broker`, `replicationLog`).
fn storage_checks(component: &str) -> Vec<String> {
    let size = [component, "storage", "size"];
    let class = [component, "storage", "storageClassName"];
    let field = format!("spec.{component}.storage");
    let (new_size, old_size) = (at("object.spec", &size), at("oldObject.spec", &size));
    let (has_size, has_old_size) = (
        present("object.spec", &size),
        present("oldObject.spec", &size),
    );
    let (new_class, old_class) = (at("object.spec", &class), at("oldObject.spec", &class));
    let (has_class, has_old_class) = (
        present("object.spec", &class),
        present("oldObject.spec", &class),
    );
    vec![
        check(
            &format!(
                "!({has_size}) || (isQuantity({new_size}) && \
                 quantity({new_size}).compareTo(quantity('1')) >= 0 && \
                 quantity({new_size}).compareTo(quantity('{MAX_STORAGE}')) <= 0)"
            ),
            &format!(
                "'{field}.size: \"' + {new_size} + '\" is not a positive quantity such as 1Gi (at \
                 most {MAX_STORAGE})'"
            ),
        ),
        check(
            &format!(
                "oldObject == null || !({has_old_size}) || !({has_size}) || !isQuantity({old_size}) || \
                 !isQuantity({new_size}) || quantity({new_size}).compareTo(quantity({old_size})) >= 0"
            ),
            &format!(
                "'{field}.size may not shrink (from ' + {old_size} + ' to ' + {new_size} + '): \
                 a volume cannot be made smaller'"
            ),
        ),
        check(
            &format!(
                "oldObject == null || (({has_class}) == ({has_old_class}) && (!({has_class}) || \
                 {new_class} == {old_class}))"
            ),
            &format!(
                "'{field}.storageClassName is immutable (it was ' + (({has_old_class}) ? \
                 {old_class} : 'unset') + ')'"
            ),
        ),
    ]
}

/// Quantity checks of one component's `resources` (`limits`, `requests`): one message per key
/// whose value is not a quantity.
fn resource_checks(component: &str) -> Vec<String> {
    ["limits", "requests"]
        .iter()
        .map(|kind| {
            let path = [component, "resources", kind];
            let map = at("object.spec", &path);
            format!(
                "(({present}) ? {map}.filter(k, !isQuantity(string({map}[k])) || \
                 quantity(string({map}[k])).isLessThan(quantity('0'))).map(k, \
                 'spec.{component}.resources.{kind}.' + k + ': \"' + string({map}[k]) + \
                 '\" is not a non-negative quantity such as 500m or 1Gi') : [])",
                present = present("object.spec", &path)
            )
        })
        .collect()
}

/// The `env` check of one component: each entry naming a variable the operator sets. (A name
/// listed twice is the operator's check: CEL cannot report each duplicate once.)
fn env_checks(component: &str, reserved: &[&str]) -> String {
    let list = at("object.spec", &[component, "env"]);
    let names = reserved
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "(({present}) ? {list}.filter(e, e.name in [{names}]).map(e, 'spec.{component}.env: ' + \
         e.name + ' is set by the operator and cannot be overridden (docs/configuration.md)') : [])",
        present = present("object.spec", &[component, "env"])
    )
}

/// The CEL expression of the `problems` variable: every problem of the object, one message each.
pub fn problems_expression() -> String {
    let timeout = at("object.spec", &["rollout", "catchUpTimeout"]);
    let mut checks = vec![check(
        &format!("object.metadata.name.matches('{DNS_1035_RE}')"),
        "'metadata.name: \"' + object.metadata.name + '\" must start with a lowercase letter, \
         hold only lowercase letters, digits and \"-\", and end with a letter or digit (the \
         Services the operator creates are named after it: RFC 1035 labels)'",
    )];
    checks.push(check(
        &format!("size(object.metadata.name) <= {MAX_NAME_LEN}"),
        &format!(
            "'metadata.name: \"' + object.metadata.name + '\" has ' + \
             string(size(object.metadata.name)) + ' characters, at most {MAX_NAME_LEN} are \
             allowed (child names derive from it)'"
        ),
    ));
    checks.extend(storage_checks("broker"));
    checks.extend(storage_checks("replicationLog"));
    checks.push(check(
        &format!(
            "!({}) || ({timeout}.matches('{DURATION_RE}') && duration({timeout}) >= duration('1s'))",
            present("object.spec", &["rollout", "catchUpTimeout"])
        ),
        &format!(
            "{timeout}.matches('{DURATION_RE}') ? 'spec.rollout.catchUpTimeout must be at least \
             1s (it is ' + {timeout} + ')' : 'spec.rollout.catchUpTimeout: \"' + {timeout} + '\" \
             is not a duration such as 5m or 90s (numbers of at most 5 digits)'"
        ),
    ));
    let interval = at("object.spec", &["monitoring", "podMonitorInterval"]);
    checks.push(check(
        &format!(
            "!({}) || ({interval}.matches('{PROMETHEUS_DURATION_RE}') && {interval}.matches('[1-9]'))",
            present("object.spec", &["monitoring", "podMonitorInterval"])
        ),
        &format!(
            "'spec.monitoring.podMonitorInterval: \"' + {interval} + '\" is not a Prometheus \
             duration such as 30s or 1m30s (whole numbers with the units y, w, d, h, m, s, ms, \
             largest first, more than zero)'"
        ),
    ));
    let labels = at("object.spec", &["monitoring", "podMonitorLabels"]);
    checks.push(format!(
        "(({present}) ? {labels}.filter(k, !k.matches('{LABEL_KEY_RE}') || \
         size(k.substring(k.lastIndexOf('/') + 1)) > 63).map(k, \
         'spec.monitoring.podMonitorLabels: \"' + k + '\" is not a label key (a name of at most 63 \
         letters, digits, \"-\", \"_\" or \".\", beginning and ending with a letter or digit, \
         with an optional DNS prefix and \"/\")') + {labels}.filter(k, \
         !{labels}[k].matches('{LABEL_VALUE_RE}') || size({labels}[k]) > 63).map(k, \
         'spec.monitoring.podMonitorLabels.' + k + ': \"' + {labels}[k] + '\" is not a label value \
         (at most 63 letters, digits, \"-\", \"_\" or \".\", beginning and ending with a letter or \
         digit)') : [])",
        present = present("object.spec", &["monitoring", "podMonitorLabels"])
    ));
    for component in ["chatServer", "replicationLog", "broker"] {
        checks.extend(resource_checks(component));
    }
    checks.push(env_checks("chatServer", CHAT_SERVER_ENV));
    checks.push(env_checks("replicationLog", LOG_ENV));
    checks.push(env_checks("broker", BROKER_ENV));
    // The ping timeout must exceed the interval (defaults 60 and 30 s), as the binary demands.
    let server = |field: &str| at("object.spec", &["chatServer", field]);
    let or_default = |field: &str, default: u32| {
        format!(
            "(({}) ? {} : {default})",
            present("object.spec", &["chatServer", field]),
            server(field)
        )
    };
    let (timeout, interval) = (
        or_default("wsPingTimeoutSeconds", 60),
        or_default("wsPingIntervalSeconds", 30),
    );
    // A ping setting given in `env` instead (WS_PING_INTERVAL, WS_PING_TIMEOUT) is the binary's
    // to check, as the operator's check leaves it.
    let env = at("object.spec", &["chatServer", "env"]);
    let ping_in_env = format!(
        "(({}) && {env}.exists(e, e.name in ['WS_PING_INTERVAL', 'WS_PING_TIMEOUT']))",
        present("object.spec", &["chatServer", "env"])
    );
    checks.push(check(
        &format!("{ping_in_env} || {timeout} > {interval}"),
        &format!(
            "'spec.chatServer.wsPingTimeoutSeconds (' + string({timeout}) + ') must be more than \
             wsPingIntervalSeconds (' + string({interval}) + '); unset fields count as their \
             defaults (60 and 30)'"
        ),
    ));
    // The memory window within its share of the chat-server's memory limit (the default limit
    // when `resources` is unset; no bound with `resources` but no memory limit).
    let window = server("memoryWindowBytes");
    let limit = at(
        "object.spec",
        &["chatServer", "resources", "limits", "memory"],
    );
    let has_resources = present("object.spec", &["chatServer", "resources"]);
    let has_limit = present(
        "object.spec",
        &["chatServer", "resources", "limits", "memory"],
    );
    let limit_bytes = format!(
        "(({has_resources}) ? (({has_limit}) && isQuantity(string({limit})) ? \
         quantity(string({limit})).asApproximateFloat() : -1.0) : \
         quantity('{CHAT_SERVER_MEMORY_LIMIT}').asApproximateFloat())"
    );
    checks.push(check(
        &format!(
            "!({}) || {limit_bytes} < 0.0 || double({window}) * 100.0 <= {limit_bytes} * \
             {MAX_WINDOW_PERCENT_OF_LIMIT}.0",
            present("object.spec", &["chatServer", "memoryWindowBytes"])
        ),
        &format!(
            "'spec.chatServer.memoryWindowBytes: ' + string({window}) + ' bytes is more than \
             {MAX_WINDOW_PERCENT_OF_LIMIT} % of the chat-server memory limit; raise \
             spec.chatServer.resources.limits.memory or lower the window'"
        ),
    ));
    checks.join(" + ")
}

/// The `ValidatingAdmissionPolicy` for ChatClusters: on CREATE and UPDATE, every problem found by
/// [`problems_expression`] joined with `; ` in one denial (reason `Invalid`, HTTP 422).
/// `failurePolicy: Fail`: an expression that cannot be evaluated refuses the object rather than
/// letting an unchecked one in.
pub fn policy() -> ValidatingAdmissionPolicy {
    ValidatingAdmissionPolicy {
        metadata: ObjectMeta {
            name: Some(POLICY_NAME.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(MatchResources {
                resource_rules: Some(vec![NamedRuleWithOperations {
                    api_groups: Some(vec![GROUP.into()]),
                    api_versions: Some(vec!["*".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                    resources: Some(vec!["chatclusters".into()]),
                    ..NamedRuleWithOperations::default()
                }]),
                ..MatchResources::default()
            }),
            variables: Some(vec![Variable {
                name: "problems".into(),
                expression: problems_expression(),
            }]),
            validations: Some(vec![Validation {
                expression: "size(variables.problems) == 0".into(),
                message_expression: Some("variables.problems.join('; ')".into()),
                reason: Some("Invalid".into()),
                ..Validation::default()
            }]),
            ..ValidatingAdmissionPolicySpec::default()
        }),
        status: None,
    }
}

/// The binding that puts [`policy`] in force for every namespace, denying (`validationActions:
/// [Deny]`).
pub fn binding() -> ValidatingAdmissionPolicyBinding {
    ValidatingAdmissionPolicyBinding {
        metadata: ObjectMeta {
            name: Some(POLICY_NAME.into()),
            ..ObjectMeta::default()
        },
        spec: Some(ValidatingAdmissionPolicyBindingSpec {
            policy_name: Some(POLICY_NAME.into()),
            validation_actions: Some(vec!["Deny".into()]),
            ..ValidatingAdmissionPolicyBindingSpec::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_guarded_step_by_step() {
        assert_eq!(
            present("object.spec", &["a", "b"]),
            "has(object.spec.a) && has(object.spec.a.b)"
        );
        assert_eq!(at("oldObject.spec", &["a", "b"]), "oldObject.spec.a.b");
    }

    /// Every check the policy makes is in the expression once, and every message names its
    /// field (the API server runs the CEL; the cluster test checks the exact messages).
    #[test]
    fn the_problems_list_covers_every_rule() {
        let e = problems_expression();
        for needle in [
            "size(object.metadata.name) <= 40",
            "'spec.broker.storage.size: \"'",
            "'spec.replicationLog.storage.size: \"'",
            "'spec.broker.storage.size may not shrink",
            "'spec.replicationLog.storage.storageClassName is immutable",
            "'spec.rollout.catchUpTimeout must be at least 1s",
            "'spec.chatServer.resources.limits.'",
            "'spec.broker.resources.requests.'",
            "'spec.monitoring.podMonitorInterval: \"'",
        ] {
            assert_eq!(e.matches(needle).count(), 1, "{needle} in {e}");
        }
        // Parentheses balance (a cheap guard against a broken template).
        assert_eq!(e.matches('(').count(), e.matches(')').count());
        let p = policy();
        let spec = p.spec.expect("spec");
        assert_eq!(spec.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(
            binding().spec.and_then(|s| s.policy_name).as_deref(),
            Some(POLICY_NAME)
        );
    }
}
