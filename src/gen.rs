//! Synthetic pixel hits: realistic nginx JSON log lines for benchmarks, tests and (with the
//! performance issue) the load generator.
//!
//! Deterministic for a seed. URLs follow a Zipf-like popularity over several sites (a long
//! tail), referrers mix direct, search, social and internal traffic, visitors repeat, and a
//! share of events are heartbeats — the shape of the `log_format pixel escape=json` lines that
//! `config/nginx/pixel.conf` makes nginx send (url and referrer percent-encoded, as `$arg_*`).

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SITES: [&str; 6] = [
    "www.example.com",
    "news.example.org",
    "m.sportsline.example",
    "shop.example.net",
    "blog.example.io",
    "docs.example.dev",
];
const REFERRERS: [&str; 6] = [
    "",
    "https%3A%2F%2Fwww.google.com%2F",
    "https%3A%2F%2Fwww.bing.com%2Fsearch%3Fq%3Dpixeld",
    "https%3A%2F%2Ft.co%2Fabc123",
    "https%3A%2F%2Fwww.facebook.com%2F",
    "https%3A%2F%2Fnews.ycombinator.com%2F",
];
const AGENTS: [&str; 3] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
];

/// A deterministic stream of nginx JSON pixel lines.
#[derive(Debug, Clone)]
pub struct HitGenerator {
    rng: SmallRng,
    /// Event time of the next hit, ms since the epoch.
    msec: u64,
    seq: u64,
}

impl HitGenerator {
    /// `start_msec` is the event time of the first hit (ms since the epoch).
    pub fn new(seed: u64, start_msec: u64) -> Self {
        HitGenerator {
            rng: SmallRng::seed_from_u64(seed),
            msec: start_msec,
            seq: 0,
        }
    }

    /// Zipf-like rank in 1..=n (s ≈ 1), by inverse transform of a log-uniform draw.
    fn zipf(&mut self, n: u64) -> u64 {
        let u: f64 = self.rng.gen();
        ((n as f64).powf(u).floor() as u64).clamp(1, n)
    }

    /// Writes the next line (without LF) into `out` (cleared first).
    pub fn next_line(&mut self, out: &mut Vec<u8>) {
        use std::io::Write;
        out.clear();
        self.seq += 1;
        self.msec += self.rng.gen_range(0..3);
        let site = SITES[(self.zipf(SITES.len() as u64) - 1) as usize];
        let page = self.zipf(5000);
        let vid = self.zipf(200_000);
        let r = self.rng.gen_range(0..10);
        let referrer = if r < 6 {
            REFERRERS[r % REFERRERS.len()]
        } else {
            ""
        };
        let ua = AGENTS[self.rng.gen_range(0..AGENTS.len())];
        let action = if self.rng.gen_bool(0.25) {
            "heartbeat"
        } else {
            "pageview"
        };
        let _ = write!(
            out,
            r#"{{"msec":{}.{:03},"url":"https%3A%2F%2F{site}%2Farticles%2F{page}","urlref":"{referrer}","vid":"{vid:016x}","ua":"{ua}","ip":"203.0.113.{}","action":"{action}","seq":{}}}"#,
            self.msec / 1000,
            self.msec % 1000,
            vid % 250,
            self.seq
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_json() {
        let mut a = HitGenerator::new(1, 1_795_311_543_462);
        let mut b = HitGenerator::new(1, 1_795_311_543_462);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..100 {
            a.next_line(&mut x);
            b.next_line(&mut y);
            assert_eq!(x, y);
            let v: serde_json::Value = serde_json::from_slice(&x).expect("valid JSON");
            assert!(v["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("https%3A%2F%2F")));
        }
    }
}
