//! Issue 11 against real processes: each row of the issue's list turns into its correct answer.
//! - an anonymous start needs `--auth none` (no flag, no key: exit 2 naming it; a WARN when
//!   given);
//! - `--auth token`: 401 with an RFC 6750 challenge without a valid token, the author from the
//!   token (a client-supplied one ignored), 403 for channels not granted on POST, pages,
//!   `GET /messages`, `GET /channels` (only readable ones listed) and WebSocket handshakes, the
//!   token in the `bearer.` subprotocol or `X-Chat-Token`, a token in the URL refused, a token
//!   that expires on a live connection closes it with 4001;
//! - idempotency keys are per author: the issue's msg-42 under `--auth token` and `--auth none`;
//! - the Origin check: a cross-site `text/plain` POST and WebSocket get 403;
//! - replicas with an internal token refuse `/snapshot` and pages without it, show `/status`
//!   details only with it, and nodes and peers still bootstrap through it;
//! - no credential from a Redis or peer URL reaches any log line;
//! - the broker over TLS (`rediss://`, `--redis-ca-file`): nodes and replicas write, follow and
//!   persist through it; a node that does not trust the broker's CA never connects, and a CA
//!   file with a plain `redis://` URL is refused at start;
//! - the broker's ACL users (`chat_wire::redis_acl`): nothing runs unauthenticated or as
//!   `default`, and neither data-plane role can flush, reconfigure, debug or list Redis, touch a
//!   key outside `chat:*`, or run the other role's commands (every other test in this directory
//!   runs its nodes and replicas as those users, so their rules are shown to be enough).

mod support;

use std::time::{Duration, Instant};

use chat_wire::redis_acl::RedisRole;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode, get_current_timestamp};
use serde_json::{Value, json};
use support::redis::RedisServer;
use support::tls::TlsFiles;
use support::{Cluster, LOG_BIN, NODE_BIN, Proc, free_port, http};
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const KEY: &str = "test-hmac-key-0123456789abcdef-0123456789";
const INTERNAL: &str = "internal-token-0123456789abcdef";

/// A token for `sub` with these extra claims, valid for `seconds` (negative: expired).
fn token(sub: &str, claims: Value, seconds: i64) -> String {
    let mut body = claims;
    body["sub"] = json!(sub);
    body["exp"] = json!((get_current_timestamp() as i64 + seconds).max(0));
    encode(
        &Header::new(Algorithm::HS256),
        &body,
        &EncodingKey::from_secret(KEY.as_bytes()).expect("key"),
    )
    .expect("encode")
}

/// Writes the HMAC key and the internal token to files; returns their paths.
fn secrets(dir: &std::path::Path) -> (String, String) {
    let key = dir.join("hmac.key");
    let internal = dir.join("internal.token");
    std::fs::write(&key, format!("{KEY}\n")).expect("key");
    std::fs::write(&internal, format!("{INTERNAL}\n")).expect("internal");
    (key.display().to_string(), internal.display().to_string())
}

/// One node with `--auth token` and one replica, both with the internal token.
async fn token_cluster(nodes: usize) -> (Cluster, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("dir");
    let (key, internal) = secrets(dir.path());
    let cluster = Cluster::start_with_logs(
        nodes,
        1,
        &[
            "--auth",
            "token",
            "--auth-hmac-key-file",
            &key,
            "--internal-token-file",
            &internal,
        ],
        &["--internal-token-file", &internal],
    )
    .await;
    (cluster, dir, internal)
}

/// A request's answer: status, `WWW-Authenticate`, JSON body.
struct Answer {
    status: u16,
    challenge: Option<String>,
    body: Value,
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Answer {
        status,
        challenge,
        body: r.json().await.unwrap_or(Value::Null),
    }
}

async fn post_as(url: &str, channel: &str, bearer: Option<&str>, body: Value) -> Answer {
    let mut req = http()
        .post(format!("{url}/channels/{channel}/messages"))
        .json(&body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    send(req).await
}

async fn get_as(url: &str, path: &str, bearer: Option<&str>) -> Answer {
    let mut req = http().get(format!("{url}{path}"));
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    send(req).await
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/ws?{query}` with these extra headers; the socket, or the refusal's HTTP status.
async fn ws(url: &str, query: &str, headers: &[(&str, &str)]) -> Result<(Ws, Option<String>), u16> {
    let mut req = format!("{}/ws?{query}", url.replacen("http://", "ws://", 1))
        .into_client_request()
        .expect("request");
    for (k, v) in headers {
        let name = tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
            .expect("header name");
        req.headers_mut()
            .append(name, HeaderValue::from_str(v).expect("header"));
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((socket, resp)) => {
            let protocol = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            Ok((socket, protocol))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

/// The next text frame as JSON, or the close frame's code and reason.
async fn next_frame(socket: &mut Ws, timeout: Duration) -> Result<Value, (u16, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.next()).await {
            Ok(Some(Ok(Frame::Text(t)))) => return Ok(serde_json::from_str(&t).expect("json")),
            Ok(Some(Ok(Frame::Close(Some(c))))) => {
                return Err((c.code.into(), c.reason.to_string()));
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("no frame within {timeout:?}: {other:?}"),
        }
    }
}

/// No flag and no key: the node refuses to start, naming `--auth none` in one line.
#[tokio::test]
async fn a_node_without_an_auth_mode_refuses_to_start() {
    let out = std::process::Command::new(NODE_BIN)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("CHAT_AUTH")
        .env_remove("AUTH_HMAC_KEY")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--auth none"), "{stderr}");
    // CHAT_AUTH=none is the one line an orchestrator adds; the node then warns.
    let mut env_node = std::process::Command::new(NODE_BIN)
        .args(["--listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--redis-url", &format!("redis://127.0.0.1:{}", free_port())])
        .env("CHAT_AUTH", "none")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        env_node.try_wait().expect("wait").is_none(),
        "CHAT_AUTH=none must start"
    );
    let _ = env_node.kill();
    let out = env_node.wait_with_output().expect("output");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("WARN") && log.contains("--auth none"), "{log}");
}

/// Rows 1 and 3 of the issue under `--auth token`: posting as "admin" without a token is a 401;
/// with a token the author is the token's subject; a channel not granted is a 403; expired and
/// forged tokens are 401 `invalid_token`; reads, `GET /messages` and `GET /channels` are checked.
#[tokio::test]
async fn token_auth_decides_who_writes_and_reads_what() {
    let (c, _dir, _) = token_cluster(1).await;
    let url = &c.nodes[0].url;
    let ann = token("ann", json!({"channels": ["general", "team.*"]}), 600);
    let bob = token("bob", json!({"channels": ["secret", "general"]}), 600);
    let reader = token("rita", json!({"subscribe": ["general"]}), 600);

    let admin = json!({"text": "I am the admin", "author": "admin"});
    let a = post_as(url, "general", None, admin.clone()).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(
        a.challenge.as_deref(),
        Some("Bearer realm=\"chat-cluster\"")
    );

    let a = post_as(url, "general", Some(&ann), admin.clone()).await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["author"], "ann", "the client's author is ignored");

    for (bad, why) in [
        (
            token("ann", json!({"channels": ["general"]}), -60),
            "expired",
        ),
        (
            encode(
                &Header::new(Algorithm::HS256),
                &json!({"sub": "admin", "exp": get_current_timestamp() + 600, "channels": ["*"]}),
                &EncodingKey::from_secret(b"a-key-the-attacker-made-up-0123456789").expect("key"),
            )
            .expect("encode"),
            "signature",
        ),
    ] {
        let a = post_as(url, "general", Some(&bad), admin.clone()).await;
        assert_eq!(a.status, 401, "{why}: {}", a.body);
        let challenge = a.challenge.unwrap_or_default();
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{why}: {challenge}"
        );
        assert!(challenge.contains(why), "{why}: {challenge}");
    }

    let a = post_as(url, "secret", Some(&ann), json!({"text": "x"})).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(
        a.challenge
            .unwrap_or_default()
            .contains("error=\"insufficient_scope\"")
    );
    let a = post_as(url, "general", Some(&reader), json!({"text": "x"})).await;
    assert_eq!(a.status, 403, "subscribe grants no publishing: {}", a.body);
    let a = post_as(url, "team.x", Some(&ann), json!({"text": "pattern"})).await;
    assert_eq!(a.status, 201, "{}", a.body);
    let a = post_as(url, "secret", Some(&bob), json!({"text": "bob's secret"})).await;
    assert_eq!(a.status, 201, "{}", a.body);

    assert_eq!(
        get_as(url, "/channels/general/messages", None).await.status,
        401
    );
    assert_eq!(
        get_as(url, "/channels/secret/messages", Some(&ann))
            .await
            .status,
        403
    );
    let page = get_as(url, "/channels/general/messages", Some(&reader)).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.body["messages"][0]["author"], "ann");
    assert_eq!(get_as(url, "/messages", Some(&ann)).await.status, 403);
    assert_eq!(get_as(url, "/channels", None).await.status, 401);
    let listed = |a: Answer| -> Vec<String> {
        a.body["channels"]
            .as_array()
            .expect("channels")
            .iter()
            .map(|c| c["name"].as_str().expect("name").to_owned())
            .collect()
    };
    assert_eq!(
        listed(get_as(url, "/channels", Some(&ann)).await),
        ["general", "team.x"]
    );
    assert_eq!(
        listed(get_as(url, "/channels", Some(&bob)).await),
        ["general", "secret"]
    );
    assert_eq!(
        listed(get_as(url, "/channels?limit=1", Some(&bob)).await),
        ["general"]
    );
    // X-Chat-Token: the token alone, for clients behind a proxy that consumes Authorization.
    let header = |path: &str, value: &str| {
        http()
            .get(format!("{url}{path}"))
            .header("x-chat-token", value.to_owned())
    };
    let a = send(header("/channels/general/messages", &ann)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        send(header("/channels/secret/messages", &ann)).await.status,
        403
    );
    let a = send(header("/channels/general/messages", "garbage")).await;
    assert_eq!(a.status, 401, "{}", a.body);
    let a = send(header("/channels/general/messages", "")).await;
    assert_eq!(a.status, 400, "{}", a.body);
    let a = send(
        http()
            .post(format!("{url}/channels/team.y/messages"))
            .header("x-chat-token", ann.clone())
            .json(&json!({"text": "via X-Chat-Token", "author": "admin"})),
    )
    .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["author"], "ann");
    // The probes stay open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get_as(url, path, None).await.status, 200, "{path}");
    }
}

/// WebSockets under `--auth token`: the handshake is refused like HTTP (401, 403, a token in
/// the URL 400), a browser's `bearer.` subprotocol is accepted and `chat-cluster` selected,
/// `send` frames need publish permission and take the author from the token, and a token that
/// expires on the open connection closes it with 4001 and the position to resume from.
#[tokio::test]
async fn websockets_check_the_token_at_the_handshake_and_when_it_expires() {
    let (c, _dir, _) = token_cluster(1).await;
    let url = &c.nodes[0].url;
    let ann = token("ann", json!({"channels": ["general"]}), 600);
    let reader = token("rita", json!({"subscribe": ["general"]}), 600);

    assert_eq!(ws(url, "channel=general", &[]).await.err(), Some(401));
    let in_url = format!("channel=general&token={ann}");
    assert_eq!(ws(url, &in_url, &[]).await.err(), Some(400));
    let bearer = format!("Bearer {ann}");
    assert_eq!(
        ws(url, "channel=secret", &[("authorization", &bearer)])
            .await
            .err(),
        Some(403)
    );
    let protocols = format!("chat-cluster, bearer.{reader}");
    assert_eq!(
        ws(
            url,
            "channel=general&live=false",
            &[("sec-websocket-protocol", &protocols)]
        )
        .await
        .err(),
        Some(403),
        "a send-only connection needs publish permission"
    );

    let protocols = format!("chat-cluster, bearer.{ann}");
    let (mut socket, selected) = ws(
        url,
        "channel=general",
        &[("sec-websocket-protocol", &protocols)],
    )
    .await
    .expect("handshake");
    assert_eq!(selected.as_deref(), Some("chat-cluster"));
    socket
        .send(Frame::text(
            json!({"type": "send", "text": "hi", "author": "admin", "id": "w1"}).to_string(),
        ))
        .await
        .expect("send");
    let mut got = Vec::new();
    while got.len() < 2 {
        got.push(
            next_frame(&mut socket, Duration::from_secs(10))
                .await
                .expect("frame"),
        );
    }
    let message = got
        .iter()
        .find(|f| f["type"] == "message")
        .expect("message");
    assert_eq!(message["author"], "ann");
    assert!(got.iter().any(|f| f["type"] == "ack"), "{got:?}");

    let protocols = format!("chat-cluster, bearer.{reader}");
    let (mut socket, _) = ws(
        url,
        "channel=general",
        &[("sec-websocket-protocol", &protocols)],
    )
    .await
    .expect("reader handshake");
    socket
        .send(Frame::text(
            json!({"type": "send", "text": "x", "id": "r1"}).to_string(),
        ))
        .await
        .expect("send");
    loop {
        let f = next_frame(&mut socket, Duration::from_secs(10))
            .await
            .expect("frame");
        if f["type"] == "error" {
            assert_eq!(f["id"], "r1");
            assert!(
                f["error"].as_str().unwrap_or("").contains("publishing"),
                "{f}"
            );
            break;
        }
    }

    let short = token("sam", json!({"subscribe": ["general"]}), 2);
    let bearer = format!("Bearer {short}");
    let (mut socket, _) = ws(url, "channel=general", &[("authorization", &bearer)])
        .await
        .expect("handshake");
    let end = loop {
        match next_frame(&mut socket, Duration::from_secs(10)).await {
            Ok(_) => continue,
            Err(close) => break close,
        }
    };
    assert_eq!(end.0, 4001, "{end:?}");
    assert!(
        end.1.contains("token expired") && end.1.contains("after=1"),
        "{end:?}"
    );
}

/// Row 3 of the issue: another user's `msg-42` never suppresses mine. Under `--auth token` the
/// scope is the token's subject; under `--auth none` it is the author the client names (the
/// same claimed author is the same scope: anonymous mode has no identity to tell them apart).
#[tokio::test]
async fn idempotency_keys_are_scoped_to_the_author() {
    let (c, _dir, _) = token_cluster(1).await;
    let url = &c.nodes[0].url;
    let mallory = token("mallory", json!({"channels": ["general"]}), 600);
    let alice = token("alice", json!({"channels": ["general"]}), 600);
    let a = post_as(
        url,
        "general",
        Some(&mallory),
        json!({"id": "msg-42", "text": "attacker text"}),
    )
    .await;
    assert_eq!(a.status, 201);
    let b = post_as(
        url,
        "general",
        Some(&alice),
        json!({"id": "msg-42", "text": "real text", "author": "mallory"}),
    )
    .await;
    assert_eq!(b.status, 201, "{}", b.body);
    assert_eq!(b.body["text"], "real text");
    assert_eq!(b.body["author"], "alice");
    let again = post_as(
        url,
        "general",
        Some(&alice),
        json!({"id": "msg-42", "text": "real text"}),
    )
    .await;
    assert_eq!(again.status, 200, "a repeat by the same user dedupes");
    assert_eq!(again.body["position"], b.body["position"]);

    let anon = Cluster::start(1, 1).await;
    let url = &anon.nodes[0].url;
    let a = post_as(
        url,
        "general",
        None,
        json!({"id": "msg-42", "text": "attacker text", "author": "mallory"}),
    )
    .await;
    assert_eq!(a.status, 201);
    let b = post_as(
        url,
        "general",
        None,
        json!({"id": "msg-42", "text": "real text", "author": "alice"}),
    )
    .await;
    assert_eq!(b.status, 201, "{}", b.body);
    assert_eq!(b.body["text"], "real text");
    let texts: Vec<String> = support::read_all(url, "general")
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["attacker text", "real text"]);
}

/// Row 2 of the issue: a cross-site `text/plain` POST and a WebSocket from
/// `http://evil.example` get 403 (anonymous and token mode alike); the node's own origin, an
/// allowed one and requests without Origin are served.
#[tokio::test]
async fn cross_site_posts_and_websockets_are_refused() {
    let c = Cluster::start_with(1, 1, &["--allowed-origins", "https://app.example"]).await;
    let url = &c.nodes[0].url;
    let host = url.trim_start_matches("http://").to_owned();
    let plain = |origin: Option<&str>| {
        let mut req = http()
            .post(format!("{url}/channels/general/messages"))
            .header("content-type", "text/plain")
            .body(r#"{"text":"csrf","author":"victim"}"#);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        send(req)
    };
    let evil = plain(Some("http://evil.example")).await;
    assert_eq!(evil.status, 403, "{}", evil.body);
    assert_eq!(plain(Some(&format!("http://{host}"))).await.status, 201);
    assert_eq!(plain(Some("https://app.example")).await.status, 201);
    assert_eq!(plain(None).await.status, 201);
    assert_eq!(
        ws(url, "channel=general", &[("origin", "http://evil.example")])
            .await
            .err(),
        Some(403)
    );
    let own = format!("http://{host}");
    assert!(
        ws(url, "channel=general", &[("origin", &own)])
            .await
            .is_ok()
    );
    let texts: Vec<String> = support::read_all(url, "general")
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(
        texts.len(),
        3,
        "only the three allowed posts are stored: {texts:?}"
    );

    // CORS for the listed origin only: its preflight is answered and its answers are readable;
    // another origin's preflight gets no CORS headers (its page cannot call the API).
    let preflight = |origin: &str| {
        http()
            .request(
                reqwest::Method::OPTIONS,
                format!("{url}/channels/general/messages"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let listed = preflight("https://app.example").await.expect("preflight");
    assert!(listed.status().is_success(), "{}", listed.status());
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_ascii_lowercase)
    };
    assert_eq!(
        header(&listed, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    let allowed = header(&listed, "access-control-allow-headers").unwrap_or_default();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );
    let other = preflight("http://evil.example").await.expect("preflight");
    assert_eq!(header(&other, "access-control-allow-origin"), None);
    let answered = http()
        .post(format!("{url}/channels/general/messages"))
        .header("origin", "https://app.example")
        .header("content-type", "application/json")
        .body(r#"{"text":"from the app"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(answered.status(), 201);
    assert_eq!(
        header(&answered, "access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );

    let (t, _dir, _) = token_cluster(1).await;
    let ann = token("ann", json!({"channels": ["general"]}), 600);
    let req = http()
        .post(format!("{}/channels/general/messages", t.nodes[0].url))
        .bearer_auth(&ann)
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body(r#"{"text":"csrf"}"#);
    assert_eq!(send(req).await.status, 403);
}

/// Rows 4–5 of the issue, data-plane half: a replica with an internal token refuses
/// `/snapshot` and pages without it and hides its `/status` details; nodes (which send it)
/// still bootstrap from it; the node's `/status` details need it too; probes stay open.
#[tokio::test]
async fn internal_endpoints_need_the_internal_token() {
    let (mut c, _dir, _) = token_cluster(1).await;
    let ann = token("ann", json!({"channels": ["general"]}), 600);
    for i in 0..5 {
        let a = post_as(
            &c.nodes[0].url,
            "general",
            Some(&ann),
            json!({"text": format!("m{i}")}),
        )
        .await;
        assert_eq!(a.status, 201);
    }
    let log = c.logs[0].url.clone();
    support::wait_position(
        std::slice::from_ref(&log),
        "persisted",
        5,
        Duration::from_secs(30),
    )
    .await;
    for path in [
        "/snapshot?after=0",
        "/channels/general/messages",
        "/messages/general",
    ] {
        assert_eq!(get_as(&log, path, None).await.status, 403, "{path}");
        let wrong = http()
            .get(format!("{log}{path}"))
            .header("x-internal-token", "internal-token-0123456789abcdeX");
        assert_eq!(send(wrong).await.status, 403, "{path}");
        let right = http()
            .get(format!("{log}{path}"))
            .header("x-internal-token", INTERNAL);
        assert_eq!(send(right).await.status, 200, "{path}");
    }
    let public = get_as(&log, "/status", None).await.body;
    assert_eq!(public["persisted"], 5, "{public}");
    assert!(public.get("limit").is_none(), "{public}");
    let full = send(
        http()
            .get(format!("{log}/status"))
            .header("x-internal-token", INTERNAL),
    )
    .await;
    assert!(full.body.get("limit").is_some(), "{}", full.body);
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(get_as(&log, path, None).await.status, 200, "{path}");
    }

    // A second node bootstraps through the internal token and serves the history.
    let i = c.add_node().await;
    let page = get_as(&c.nodes[i].url, "/channels/general/messages", Some(&ann)).await;
    assert_eq!(
        page.body["messages"].as_array().map(Vec::len),
        Some(5),
        "{}",
        page.body
    );

    let node = &c.nodes[0].url;
    let public = get_as(node, "/status", None).await.body;
    assert_eq!(public["phase"], "live");
    assert!(public.get("epoch").is_none(), "{public}");
    let full = send(
        http()
            .get(format!("{node}/status"))
            .header("x-internal-token", INTERNAL),
    )
    .await;
    assert!(full.body.get("epoch").is_some(), "{}", full.body);

    // A replica without the token keeps serving (contract) and says so.
    let open = Cluster::start(1, 1).await;
    assert_eq!(
        get_as(&open.logs[0].url, "/snapshot?after=0", None)
            .await
            .status,
        200
    );
    assert!(open.logs[0].log_text().contains("no internal token"));
}

/// Row 4 of the issue: every component started with a password in its Redis URL (and userinfo
/// in its peer and log URLs) while Redis is unreachable logs the failures, each with the URL
/// redacted, and never the password, in JSON and text format.
#[tokio::test]
async fn no_credential_reaches_a_log_line() {
    let dir = tempfile::tempdir().expect("dir");
    let dead = free_port();
    let redis_url = format!("redis://:hunter2-redis@127.0.0.1:{dead}/0");
    let peer = format!("http://peer:hunter2-peer@127.0.0.1:{}", free_port());
    let mut procs = Vec::new();
    for format in ["json", "text"] {
        let port = free_port();
        let p = Proc::spawn_env(
            &format!("node-{format}"),
            NODE_BIN,
            vec![
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--redis-url".into(),
                redis_url.clone(),
                "--log-url".into(),
                peer.clone(),
                "--auth".into(),
                "none".into(),
            ],
            &[("RUST_LOG_FORMAT", format)],
            port,
            dir.path(),
        );
        procs.push(p);
        let port = free_port();
        let data = dir.path().join(format!("data-{format}"));
        let p = Proc::spawn_env(
            &format!("log-{format}"),
            LOG_BIN,
            vec![
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--redis-url".into(),
                redis_url.clone(),
                "--data-dir".into(),
                data.display().to_string(),
                "--peer-url".into(),
                peer.clone(),
            ],
            &[("RUST_LOG_FORMAT", format)],
            port,
            dir.path(),
        );
        procs.push(p);
    }
    let forget = std::process::Command::new(LOG_BIN)
        .args(["forget-replica", "gone", "--redis-url", &redis_url])
        .output()
        .expect("forget-replica");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut all = String::from_utf8_lossy(&forget.stdout).into_owned();
    all += &String::from_utf8_lossy(&forget.stderr);
    for p in &procs {
        let text = p.log_text();
        assert!(
            text.contains(":***@127.0.0.1"),
            "{}: the failure is logged with the URL redacted:\n{text}",
            p.name
        );
        all += &text;
    }
    assert!(
        !all.contains("hunter2"),
        "a credential reached a log line:\n{all}"
    );
}

/// The error Redis answers `cmd` with on a connection opened with `url` (None: it succeeded).
fn redis_error(url: &str, cmd: &[&str]) -> Option<String> {
    let mut conn = redis::Client::open(url)
        .and_then(|c| c.get_connection())
        .expect("connection");
    let mut command = redis::cmd(cmd[0]);
    for arg in &cmd[1..] {
        command.arg(*arg);
    }
    command
        .query::<redis::Value>(&mut conn)
        .err()
        .map(|e| e.to_string())
}

#[test]
fn redis_users_are_confined_to_their_role() {
    let redis = RedisServer::start();
    let anonymous = format!("redis://127.0.0.1:{}", redis.port());
    let refused = redis_error(&anonymous, &["GET", "chat:seq"]).expect("anonymous GET refused");
    assert!(refused.contains("NOAUTH"), "{refused}");
    let as_default = format!("redis://default:anything@127.0.0.1:{}", redis.port());
    let opened = redis::Client::open(as_default.as_str()).and_then(|c| c.get_connection());
    assert!(opened.is_err(), "logged in as default");

    for role in RedisRole::ALL {
        let url = redis.url_as(role);
        for cmd in [
            &["FLUSHALL"][..],
            &["FLUSHDB"],
            &["CONFIG", "GET", "*"],
            &["DEBUG", "SLEEP", "0"],
            &["KEYS", "*"],
            &["SCAN", "0"],
            &["SHUTDOWN", "NOSAVE"],
            &["ACL", "LIST"],
            &["MONITOR"],
            &["CLIENT", "LIST"],
            &["REPLICAOF", "NO", "ONE"],
            &["SET", "other:key", "1"],
            &["GET", "other:key"],
            &["PUBLISH", "chat", "x"],
        ] {
            let error = redis_error(&url, cmd);
            // DEBUG is refused before the ACL check unless `enable-debug-command` allows it.
            assert!(
                error.as_deref().is_some_and(
                    |e| e.contains("no permissions") || e.contains("DEBUG command not allowed")
                ),
                "{role:?} {cmd:?}: {error:?}"
            );
        }
        assert_eq!(redis_error(&url, &["GET", "chat:seq"]), None, "{role:?}");
        assert_eq!(redis_error(&url, &["PING"]), None, "{role:?}");
    }
    let chat_server = redis.url_as(RedisRole::ChatServer);
    let replication_log = redis.url_as(RedisRole::ReplicationLog);
    for (url, cmd) in [
        (&chat_server, &["XTRIM", "chat:stream", "MINID", "5"][..]),
        (&chat_server, &["HDEL", "chat:replicas", "log-0"]),
        // Writes only on the keys its scripts write: not the stream's existence, the sequence,
        // the registry or a key's lifetime.
        (&chat_server, &["DEL", "chat:stream"]),
        (&chat_server, &["SET", "chat:seq", "1"]),
        (&chat_server, &["HSET", "chat:replicas", "log-0", "0"]),
        (&chat_server, &["EXPIRE", "chat:stream", "100"]),
        (&chat_server, &["CLIENT", "TRACKING", "on", "BCAST"]),
        (&chat_server, &["SELECT", "1"]),
        (&replication_log, &["XADD", "chat:stream", "*", "t", "x"]),
        (&replication_log, &["INCR", "chat:seq"]),
        (&replication_log, &["DEL", "chat:stream"]),
        (
            &replication_log,
            &["HSET", "chat:idem:general:a3:ann:k", "p", "6"],
        ),
        (&replication_log, &["SET", "chat:fence:x", "1"]),
    ] {
        let error = redis_error(url, cmd);
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.contains("no permissions")),
            "{cmd:?}: {error:?}"
        );
    }
    // The admin can (people, the readiness probe).
    assert_eq!(redis_error(&redis.url(), &["CONFIG", "GET", "port"]), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_over_tls_is_trusted_only_through_its_ca() {
    let c = Cluster::start_tls(2, 1).await;
    let nodes: Vec<String> = c.nodes.iter().map(|p| p.url.clone()).collect();
    let (code, body) = support::post(&nodes[0], "tls", json!({"text": "over tls"})).await;
    assert_eq!(code, 201, "{body}");
    let position = body["position"].as_u64().expect("position");
    support::wait_position(&nodes, "position", position, Duration::from_secs(20)).await;
    let logs = [c.logs[0].url.clone()];
    support::wait_position(&logs, "persisted", position, Duration::from_secs(20)).await;
    let read = support::read_all(&nodes[1], "tls").await;
    assert_eq!(
        read.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["over tls"]
    );

    // OpenSSL's client (the broker's readiness probe, `redis-cli --tls`) accepts the chain too.
    let ca = c.redis.ca_file().expect("TLS broker");
    let probe = std::process::Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&ca)
        .args(["-u", &c.redis.url(), "--no-auth-warning", "-e", "ping"])
        .output()
        .expect("redis-cli");
    assert_eq!(
        String::from_utf8_lossy(&probe.stdout).trim(),
        "PONG",
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );

    // A node that trusts another CA never gets a connection (and says why).
    let stranger = TlsFiles::generate();
    let port = free_port();
    let url = c.redis.url_as(RedisRole::ChatServer);
    let mut wrong = Proc::spawn(
        "node-wrong-ca",
        NODE_BIN,
        [
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis-url",
            &url,
            "--redis-ca-file",
            &stranger.ca().display().to_string(),
            "--log-url",
            &c.log_list(),
            "--auth",
            "none",
        ]
        .map(String::from)
        .to_vec(),
        port,
        c.dir.path(),
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = support::status(&wrong.url).await;
    assert_ne!(status["phase"], "live", "{status}");
    let log = wrong.log_text();
    assert!(
        log.contains("cannot reach the broker") && log.to_lowercase().contains("certificate"),
        "{log}"
    );
    wrong.kill9();

    // A CA file is refused with a plain redis:// URL: it would protect nothing.
    let out = std::process::Command::new(NODE_BIN)
        .args(["--listen", "127.0.0.1:0", "--auth", "none"])
        .args(["--redis-url", "redis://127.0.0.1:6379"])
        .args(["--redis-ca-file", &stranger.ca().display().to_string()])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not rediss://"), "{stderr}");
    let out = std::process::Command::new(LOG_BIN)
        .args(["--listen", "127.0.0.1:0"])
        .args(["--redis-url", "redis://127.0.0.1:6379"])
        .args(["--redis-ca-file", &stranger.ca().display().to_string()])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("not rediss://"), "{stderr}");
    c.redis.assert_no_acl_denial();
}
