//! The Kafka export against a real Kafka-protocol broker: `tansu` 0.6.0 (a broker written in
//! Rust, installed by scripts/test into ~/.cache/pixeld/tansu-0.6.0, or named by
//! `PIXELD_TANSU`), started on a free loopback port with in-memory storage, read back with an
//! rdkafka consumer.
//!
//! - 100 000 lines over TCP reach the topic: every record of the log exactly once, value =
//!   the raw line, key as configured (none for a line that does not parse), headers and
//!   timestamp right; a missing topic stops `serve` with an error naming it; the export's
//!   consumer cannot be moved by hand.
//! - kill -9 during export, restart: every record at least once, duplicates within
//!   shards × `max_uncommitted`.
//! - The broker killed for a while (ingest goes on, `/readyz` says degraded, lag grows) and
//!   restarted empty: the export catches up, and every record is in what was consumed before
//!   the kill or after the restart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::common::{self, free_tcp_port, http, metric_sum, metrics, Server};

const PARTITIONS: i32 = 3;

/// The tansu binary: `PIXELD_TANSU`, else where scripts/test installs it.
fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PIXELD_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let p = Path::new(&home).join(".cache/pixeld/tansu-0.6.0/bin/tansu");
    assert!(
        p.is_file(),
        "the Kafka export tests need the tansu broker at {} (or PIXELD_TANSU): run ./scripts/test, \
         or `cargo install --locked tansu --version 0.6.0 --features dynostore --root ~/.cache/pixeld/tansu-0.6.0`",
        p.display()
    );
    p
}

/// A tansu broker on loopback, killed (by PID) on drop.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(port: u16) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Broker { child, port }
    }

    /// A broker on `port` holding the (empty) topic "hits".
    fn with_topic(port: u16) -> Broker {
        let b = Broker::start(port);
        b.create_topic("hits");
        b
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn create_topic(&self, topic: &str) {
        let out = Command::new(tansu_bin())
            .args(["topic", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--partitions", &PARTITIONS.to_string(), topic])
            .output()
            .expect("tansu topic create");
        assert!(
            out.status.success(),
            "tansu topic create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One consumed message.
#[derive(Debug, Clone)]
struct Msg {
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: BTreeMap<String, String>,
    timestamp_ms: Option<i64>,
}

impl Msg {
    fn header(&self, k: &str) -> &str {
        self.headers
            .get(k)
            .unwrap_or_else(|| panic!("header {k} missing: {self:?}"))
    }
    /// (shard, offset) of the record it carries.
    fn id(&self) -> (usize, u64) {
        (
            self.header("pixeld-shard").parse().unwrap(),
            self.header("pixeld-offset").parse().unwrap(),
        )
    }
}

/// Reads the topic from the beginning of every partition: at least `min` messages (within
/// `limit`), then on until it has been quiet for two seconds.
fn consume(brokers: &str, topic: &str, min: usize, limit: Duration) -> Vec<Msg> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "pixeld-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    let mut last = Instant::now();
    while Instant::now() < deadline && (out.len() < min || last.elapsed() < Duration::from_secs(2))
    {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                out.push(Msg {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| {
                                    (
                                        x.key.to_string(),
                                        String::from_utf8_lossy(x.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    timestamp_ms: m.timestamp().to_millis(),
                })
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    out
}

/// The config text: 2 shards exporting to topic `hits` at `brokers`, plus `extra` lines.
fn config(brokers: &str, extra: &str) -> String {
    format!(
        "shards = 2\n[log]\nfsync = \"interval\"\n[export.kafka]\nbrokers = \"{brokers}\"\ntopic = \"hits\"\nhost = \"edge-test-1\"\n{extra}\n"
    )
}

/// `pixeld serve` with config text `cfg`, once its export has started.
fn serve_exporting(data: &Path, cfg: &str) -> Server {
    let mut server = Server::builder().data(data).config(cfg).start();
    server
        .wait_for("pixeld: export: to Kafka topic")
        .expect("the export started");
    server
}

/// Line `i`: a JSON pixel hit whose url and vid name `i`; every 1000th line is garbage.
fn line(i: u64) -> String {
    if i % 1000 == 999 {
        return format!("garbage line {i}");
    }
    format!(
        r#"{{"url":"https://Site{}.example/page/{i}?utm_source=x","vid":"v{}","msec":"{}.{:03}","n":{i}}}"#,
        i % 7,
        i % 5000,
        common::data_ms() / 1000,
        i % 1000
    )
}

/// The url key pixeld should give line `i` (host lower-cased, query dropped); None for garbage.
fn url_key(i: u64) -> Option<String> {
    (i % 1000 != 999).then(|| format!("https://site{}.example/page/{i}", i % 7))
}

/// Sends lines `range` over `conns` TCP connections (spread over the shards by SO_REUSEPORT).
fn send(port: u16, range: std::ops::Range<u64>, conns: usize) {
    try_send(port, range, conns).expect("send lines over TCP");
}

/// [`send`], for a server that may be killed meanwhile.
fn try_send(port: u16, range: std::ops::Range<u64>, conns: usize) -> std::io::Result<()> {
    let mut streams: Vec<TcpStream> = (0..conns)
        .map(|_| TcpStream::connect(("127.0.0.1", port)))
        .collect::<Result<_, _>>()?;
    let mut bufs = vec![Vec::new(); conns];
    for i in range {
        let b = &mut bufs[i as usize % conns];
        b.extend_from_slice(line(i).as_bytes());
        b.push(b'\n');
        if b.len() > 64 << 10 {
            streams[i as usize % conns].write_all(b)?;
            b.clear();
        }
    }
    for (s, b) in streams.iter_mut().zip(bufs) {
        s.write_all(&b)?;
    }
    Ok(())
}

/// Waits until `pred` holds on /metrics.
fn wait_metrics(
    port: u16,
    what: &str,
    limit: Duration,
    pred: impl Fn(&BTreeMap<String, f64>) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let m = metrics(port);
        if pred(&m) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {m:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Per shard, one past the last durable offset.
fn durable_next(port: u16, shards: usize) -> Vec<u64> {
    let m = metrics(port);
    (0..shards)
        .map(|s| (m[&format!("pixeld_durable_offset{{shard=\"{s}\"}}")] + 1.0) as u64)
        .collect()
}

fn all_ids(durable: &[u64]) -> BTreeSet<(usize, u64)> {
    durable
        .iter()
        .enumerate()
        .flat_map(|(s, &n)| (0..n).map(move |o| (s, o)))
        .collect()
}

fn n_of(value: &[u8]) -> u64 {
    let v = String::from_utf8_lossy(value);
    if let Some(rest) = v.strip_prefix("garbage line ") {
        return rest.parse().unwrap();
    }
    let at = v.find("\"n\":").expect("n field") + 4;
    v[at..].trim_end_matches('}').parse().unwrap()
}

#[test]
fn hundred_thousand_lines_reach_the_topic_with_keys_and_headers() {
    const N: u64 = 100_000;
    let broker = Broker::with_topic(free_tcp_port());
    let dir = common::tempdir();
    let cfg = config(
        &broker.brokers(),
        "key = \"url\"\ncompression = \"zstd\"\n[export.kafka.properties]\n\"linger.ms\" = 10",
    );
    let data = dir.path().join("data");
    let server = serve_exporting(&data, &cfg);
    let t0 = pixeld::sys::now_ns();
    send(server.tcp, 0..N, 4);
    wait_metrics(
        server.http,
        "every line appended and exported",
        Duration::from_secs(120),
        |m| metric_sum(m, "pixeld_export_sent_total") >= N,
    );
    let durable = durable_next(server.http, 2);
    assert_eq!(durable.iter().sum::<u64>(), N, "every line is in the log");
    let msgs = consume(
        &broker.brokers(),
        "hits",
        N as usize,
        Duration::from_secs(120),
    );
    assert_eq!(msgs.len() as u64, N, "the topic holds every record once");
    let mut ids = BTreeSet::new();
    let mut seen_n = BTreeSet::new();
    for m in &msgs {
        assert!(ids.insert(m.id()), "duplicate {:?}", m.id());
        let n = n_of(&m.value);
        assert_eq!(m.value, line(n).as_bytes(), "the value is the raw line");
        assert!(seen_n.insert(n));
        assert_eq!(
            m.key
                .as_deref()
                .map(|k| String::from_utf8(k.to_vec()).unwrap()),
            url_key(n),
            "key of line {n}"
        );
        assert_eq!(m.header("pixeld-host"), "edge-test-1");
        let recv: u64 = m.header("pixeld-recv-ts").parse().unwrap();
        assert!(
            recv >= t0 && recv <= pixeld::sys::now_ns(),
            "recv ts {recv}"
        );
        assert_eq!(m.timestamp_ms, Some((recv / 1_000_000) as i64));
    }
    assert_eq!(ids, all_ids(&durable), "every (shard, offset) of the log");
    // Metrics, readiness and the consumer's offsets agree.
    let m = metrics(server.http);
    assert_eq!(metric_sum(&m, "pixeld_export_lag_records"), 0);
    assert_eq!(metric_sum(&m, "pixeld_export_skipped_records_total"), 0);
    let (status, _, body) = http(server.http, "GET", "/readyz", &[], b"");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 200);
    assert!(
        body.contains("export kafka topic \"hits\": ok; 0 records not yet delivered"),
        "{body}"
    );
    wait_metrics(
        server.http,
        "the export offsets committed",
        Duration::from_secs(30),
        |m| {
            (0..2).all(|s| {
                m.get(&format!(
                    "pixeld_consumer_lag_records{{consumer=\"kafka-export\",shard=\"{s}\"}}"
                )) == Some(&0.0)
            })
        },
    );
    // The export's consumer moves only with the broker.
    let (status, _, body) = http(
        server.http,
        "PUT",
        "/v1/consumers/kafka-export/offsets",
        &[],
        br#"{"offsets":{"0":0}}"#,
    );
    assert_eq!(status, 409, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = http(
        server.http,
        "DELETE",
        "/v1/consumers/kafka-export",
        &[],
        b"",
    );
    assert_eq!(status, 409);
    server.signal("TERM");
    let (code, out) = server.wait();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("export: stopped:"), "{out}");

    // A topic that does not exist stops the start, naming it.
    let server = Server::builder()
        .data(&dir.path().join("data2"))
        .config(&cfg.replace("topic = \"hits\"", "topic = \"no-such-topic\""))
        .start();
    let (code, out) = server.wait();
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("export.kafka.topic \"no-such-topic\" does not exist")
            && out.contains("create it"),
        "{out}"
    );
}

#[test]
fn kill9_during_export_resends_at_most_the_uncommitted() {
    const N: u64 = 60_000;
    const MAX_UNCOMMITTED: u64 = 3_000;
    let broker = Broker::with_topic(free_tcp_port());
    let dir = common::tempdir();
    let cfg = config(
        &broker.brokers(),
        &format!("max_uncommitted = {MAX_UNCOMMITTED}\ncommit_interval = \"100ms\""),
    );
    let data = dir.path().join("data");
    let server = serve_exporting(&data, &cfg);
    // Lines keep arriving while the export runs; kill -9 once part of them is exported.
    let port = server.tcp;
    let sender = std::thread::spawn(move || {
        for k in 0..30 {
            if try_send(port, k * (N / 30)..(k + 1) * (N / 30), 2).is_err() {
                return; // killed
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    });
    wait_metrics(
        server.http,
        "part of the lines exported",
        Duration::from_secs(60),
        |m| metric_sum(m, "pixeld_export_sent_total") >= N / 4,
    );
    server.signal("KILL");
    let _ = server.wait();
    let _ = sender.join();
    let server = serve_exporting(&data, &cfg);
    let deadline = Instant::now() + Duration::from_secs(120);
    let durable = loop {
        let durable = durable_next(server.http, 2);
        let m = metrics(server.http);
        if durable.iter().sum::<u64>() > 0 && metric_sum(&m, "pixeld_export_lag_records") == 0 {
            break durable;
        }
        assert!(Instant::now() < deadline, "export did not catch up: {m:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let total: u64 = durable.iter().sum();
    let msgs = consume(
        &broker.brokers(),
        "hits",
        total as usize,
        Duration::from_secs(60),
    );
    let mut count: HashMap<(usize, u64), u64> = HashMap::new();
    for m in &msgs {
        *count.entry(m.id()).or_default() += 1;
        assert_eq!(m.value, line(n_of(&m.value)).as_bytes());
    }
    let ids: BTreeSet<_> = count.keys().copied().collect();
    assert_eq!(
        ids,
        all_ids(&durable),
        "every record of the log at least once"
    );
    let dups: u64 = count.values().map(|c| c - 1).sum();
    eprintln!(
        "kill -9: {total} records in the log, {} messages, {dups} duplicates (bound {})",
        msgs.len(),
        2 * MAX_UNCOMMITTED
    );
    assert!(
        dups <= 2 * MAX_UNCOMMITTED,
        "{dups} duplicates exceed shards × max_uncommitted"
    );
    server.signal("TERM");
    assert_eq!(server.wait().0, Some(0));
}

#[test]
fn broker_down_then_back_empty_export_catches_up_and_ingest_never_stalls() {
    const N: u64 = 20_000;
    let port = free_tcp_port();
    let mut broker = Broker::with_topic(port);
    let dir = common::tempdir();
    let cfg = config(&broker.brokers(), "stall_timeout = \"3s\"");
    let data = dir.path().join("data");
    let server = serve_exporting(&data, &cfg);
    send(server.tcp, 0..N, 2);
    wait_metrics(
        server.http,
        "first half exported",
        Duration::from_secs(60),
        |m| metric_sum(m, "pixeld_export_sent_total") >= N,
    );
    // tansu keeps messages in memory: what it holds now is read before it is killed.
    let before = consume(
        &broker.brokers(),
        "hits",
        N as usize,
        Duration::from_secs(60),
    );
    assert_eq!(before.len() as u64, N);
    broker.kill();
    send(server.tcp, N..2 * N, 2);
    // Ingest goes on into the log while the broker is down.
    wait_metrics(
        server.http,
        "second half appended",
        Duration::from_secs(60),
        |m| {
            metric_sum(m, "pixeld_appended_events_total") >= 2 * N
                && metric_sum(m, "pixeld_export_lag_records") >= N
        },
    );
    let (status, _, body) = http(server.http, "GET", "/readyz", &[], b"");
    let body = String::from_utf8_lossy(&body);
    assert_eq!(
        status, 200,
        "a broker that is down does not make pixeld unready: {body}"
    );
    wait_metrics(
        server.http,
        "broker errors counted",
        Duration::from_secs(30),
        |m| metric_sum(m, "pixeld_export_errors_total") > 0,
    );
    let (_, _, body) = http(server.http, "GET", "/readyz", &[], b"");
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("degraded") && body.contains("records not yet delivered"),
        "{body}"
    );
    std::thread::sleep(Duration::from_secs(2));
    // Back, empty (its storage was memory): the topic is created again.
    let broker = Broker::with_topic(port);
    wait_metrics(
        server.http,
        "export caught up",
        Duration::from_secs(120),
        |m| metric_sum(m, "pixeld_export_lag_records") == 0,
    );
    let durable = durable_next(server.http, 2);
    assert_eq!(durable.iter().sum::<u64>(), 2 * N);
    let after = consume(
        &broker.brokers(),
        "hits",
        N as usize,
        Duration::from_secs(60),
    );
    let ids: BTreeSet<_> = before.iter().chain(&after).map(Msg::id).collect();
    assert_eq!(ids, all_ids(&durable), "nothing missing across the outage");
    let m = metrics(server.http);
    eprintln!(
        "outage: errors {:?}",
        m.iter()
            .filter(|(k, v)| k.starts_with("pixeld_export_errors_total") && **v > 0.0)
            .collect::<Vec<_>>()
    );
    assert_eq!(metric_sum(&m, "pixeld_export_skipped_records_total"), 0);
    server.signal("TERM");
    assert_eq!(server.wait().0, Some(0));
}
