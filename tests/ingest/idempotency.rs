//! `Idempotency-Key` on `POST /v1/events` against a real `pixeld serve`: a retry is answered
//! with the first answer (`Idempotent-Replayed: true`) and stores nothing; the same key with
//! another body is a 422; a bad key a 400; a key is forgotten after the horizon; and a crash
//! after the batch is durable but before it is answered (the fault hook aborts the process
//! there) leaves a pending key that the retry, after a restart, resolves from the log:
//! stored once.

use crate::common::log_http::all_lines;
use crate::common::{self, http, Server};

fn batch(tag: &str, n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("{{\"url\":\"https://idem.example/{tag}/{i}\",\"vid\":\"v{i}\"}}\n"))
        .collect::<String>()
        .into_bytes()
}

fn post(port: u16, key: Option<&str>, body: &[u8]) -> (u16, String, serde_json::Value) {
    let headers: Vec<(&str, &str)> = key.map(|k| ("Idempotency-Key", k)).into_iter().collect();
    let (st, head, body) = http(port, "POST", "/v1/events", &headers, body);
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (st, head.to_ascii_lowercase(), v)
}

#[test]
fn a_retried_batch_is_answered_again_and_stored_once() {
    let mut s = Server::builder()
        .shards(2)
        .config("[ingest]\nidempotency_horizon = \"2s\"\n")
        .start();
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let one = batch("one", 50);
    let (st, head, first) = post(s.http, Some("batch-1"), &one);
    assert_eq!(st, 200, "{first}");
    assert!(!head.contains("idempotent-replayed"), "{head}");
    // Retries, on new connections (either shard may take them).
    for _ in 0..6 {
        let (st, head, again) = post(s.http, Some("batch-1"), &one);
        assert_eq!((st, &again), (200, &first));
        assert!(head.contains("idempotent-replayed: true"), "{head}");
    }
    // The same key, another body: refused, naming the conflict.
    let (st, _, v) = post(s.http, Some("batch-1"), &batch("other", 3));
    assert_eq!(st, 422, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("different body"),
        "{v}"
    );
    // A key that is not one.
    let (st, _, v) = post(s.http, Some("has space"), &one);
    assert_eq!(st, 400, "{v}");
    // Without a key, a resend is a new batch (as before).
    assert_eq!(post(s.http, None, &batch("plain", 2)).0, 200);
    assert_eq!(post(s.http, None, &batch("plain", 2)).0, 200);
    let lines = all_lines(s.http);
    assert_eq!(
        lines.len(),
        50 + 4,
        "the keyed batch once, the unkeyed twice"
    );
    // After the horizon the key is forgotten: the same key may carry a new batch.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (st, head, v) = post(s.http, Some("batch-1"), &batch("later", 5));
    assert_eq!(st, 200, "{v}");
    assert!(!head.contains("idempotent-replayed"), "{head}");
    assert_eq!(v["accepted"], 5);
    assert_eq!(all_lines(s.http).len(), 50 + 4 + 5);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the test-only fault hooks: cargo test --features fault-injection (scripts/test does)"
)]
fn a_crash_between_durable_and_answer_is_resolved_by_the_retry() {
    let tmp = common::tempdir();
    let data = tmp.path().join("data");
    let mut s = Server::builder()
        .data(&data)
        .shards(1)
        .env("PIXELD_TEST_ABORT_AFTER_DURABLE", "1")
        .start();
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let body = batch("crash", 200);
    // No answer: the process died after fsyncing the batch.
    let answered = common::try_post_events_with(s.http, &[("Idempotency-Key", "crash-1")], &body);
    assert_eq!(answered, None, "the fault hook did not fire");
    let (code, log) = s.wait();
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains("PIXELD_TEST_ABORT_AFTER_DURABLE"), "{log}");

    // The retry after the restart: answered 200, nothing stored twice.
    let mut s = Server::builder().data(&data).shards(1).start();
    assert!(s.wait_for("ready").is_some(), "{}", s.seen.join("\n"));
    let (st, head, v) = post(s.http, Some("crash-1"), &body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["accepted"], 200, "{v}");
    assert!(
        !head.contains("idempotent-replayed"),
        "resolved, not replayed: {head}"
    );
    let (st, head, again) = post(s.http, Some("crash-1"), &body);
    assert_eq!((st, &again), (200, &v));
    assert!(head.contains("idempotent-replayed: true"), "{head}");
    let lines = all_lines(s.http);
    assert_eq!(lines.len(), 200, "stored once");
    assert_eq!(lines[0], body.split(|&b| b == b'\n').next().unwrap());
}
