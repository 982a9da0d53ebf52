//! Synthetic pixel hits: realistic nginx JSON log lines for the load generator (`pixeld
//! blast`), benchmarks and tests.
//!
//! Lines have the shape that `config/nginx/pixel.conf` makes nginx send
//! (`log_format pixel escape=json`: `msec`, `url`, `urlref`, `vid`, `action`, `ua`, `ip`, with
//! url and referrer percent-encoded as `$arg_*` leaves them), optionally behind nginx's syslog
//! header (`<190>Nov 22 01:39:03 pixel: `), plus `inc` on heartbeats and a `seq` field — the
//! event's 1-based sequence number, so that loss can be accounted per event. Popularity is
//! long-tailed: sites, pages within a site and visitors are Zipf-distributed (s ≈ 1); referrers
//! mix direct, search, social and internal traffic; a share of events are heartbeats; an
//! optional share arrives late (stamped up to `late_max_ms` before the others); an optional
//! share are custom events (`action=event`, a name from [`CUSTOM_EVENTS`], a signup's props as
//! the pixel logs them: percent-encoded JSON).
//!
//! Every line is a pure function of (seed, config, start time, index): each event draws from
//! its own RNG seeded by the index. That makes the stream deterministic for a seed however it
//! is cut up — several sender threads can each produce their share of the indices and together
//! send exactly the lines `pixeld blast --out` writes for the same seed — at the cost of one
//! cheap RNG seeding per line. This module only makes bytes: no I/O, no clock (the caller
//! chooses the start time).

use std::io::Write as _;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Custom events (name, props as the pixel logs `$arg_p`), drawn uniformly: downloads and
/// outbound clicks more often than signups, which carry a plan.
pub const CUSTOM_EVENTS: [(&str, &str); 6] = [
    ("download", ""),
    ("download", ""),
    ("outbound", ""),
    ("outbound", ""),
    ("signup", "%7B%22plan%22%3A%22pro%22%7D"),
    ("signup", "%7B%22plan%22%3A%22free%22%7D"),
];

/// The first sites, most popular first; more are named `siteN.example.com`.
const SITES: [&str; 6] = [
    "www.example.com",
    "news.example.org",
    "m.sportsline.example",
    "shop.example.net",
    "blog.example.io",
    "docs.example.dev",
];
/// Search engines' referrers, percent-encoded as nginx's `$arg_ref` keeps them.
const SEARCH: [&str; 3] = [
    "https%3A%2F%2Fwww.google.com%2F",
    "https%3A%2F%2Fwww.bing.com%2Fsearch%3Fq%3Dpixeld",
    "https%3A%2F%2Fduckduckgo.com%2F",
];
const SOCIAL: [&str; 4] = [
    "https%3A%2F%2Ft.co%2Fabc123",
    "https%3A%2F%2Fwww.facebook.com%2F",
    "https%3A%2F%2Fnews.ycombinator.com%2F",
    "https%3A%2F%2Fwww.reddit.com%2Fr%2Fwebdev%2F",
];
const SECTIONS: [&str; 4] = ["articles", "news", "video", "guides"];
const AGENTS: [&str; 3] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0",
];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
/// Engaged seconds a heartbeat reports (`inc`), as a page script sending at these intervals.
const INCS: [u32; 4] = [5, 10, 15, 30];

/// What goes in front of each JSON line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Header {
    /// The bare JSON object (what nginx writes to a file, and what `POST /v1/events` takes).
    None,
    /// nginx's syslog header, RFC 3164 with `nohostname` and tag `pixel`:
    /// `<190>Nov 22 01:39:03 pixel: ` (UTC, whole seconds, space-padded day).
    Syslog,
}

/// Shares of the referrer classes; they need not add up to 1 (they are weights).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReferrerMix {
    /// No referrer (`"urlref":""`).
    pub direct: f64,
    /// A search engine.
    pub search: f64,
    /// A social site.
    pub social: f64,
    /// Another page of the same site.
    pub internal: f64,
}

impl Default for ReferrerMix {
    fn default() -> Self {
        ReferrerMix {
            direct: 0.40,
            search: 0.30,
            social: 0.15,
            internal: 0.15,
        }
    }
}

/// The shape of the generated traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    /// Distinct sites (hosts), Zipf-distributed.
    pub sites: usize,
    /// Distinct pages per site, Zipf-distributed.
    pub urls_per_site: u64,
    /// Distinct visitor ids, Zipf-distributed (a few heavy visitors, a long tail).
    pub visitors: u64,
    /// Share of events that are heartbeats (with `inc`), the rest pageviews.
    pub heartbeat_share: f64,
    /// Share of events stamped late: between one minute and `late_max_ms` before their
    /// neighbours (a relay's buffer flushed, a phone back online).
    pub late_share: f64,
    pub late_max_ms: u64,
    /// Share of urls that carry a `?utm_source=…` query string (pixeld drops it by default).
    pub utm_share: f64,
    /// Share of the events that are not heartbeats sent as custom events instead of
    /// pageviews. 0 keeps every line as it was without the option.
    pub event_share: f64,
    pub referrers: ReferrerMix,
    /// Mean event-time step between consecutive events, in ms (1000 / events per second of
    /// event time). Each event also gets 0–2 ms of jitter.
    pub ms_per_event: f64,
    pub header: Header,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            sites: SITES.len(),
            urls_per_site: 5000,
            visitors: 200_000,
            heartbeat_share: 0.25,
            late_share: 0.0,
            late_max_ms: 3_600_000,
            utm_share: 0.05,
            event_share: 0.0,
            referrers: ReferrerMix::default(),
            ms_per_event: 1.0,
            header: Header::None,
        }
    }
}

/// A deterministic stream of nginx JSON pixel lines.
#[derive(Debug, Clone)]
pub struct HitGenerator {
    seed: u64,
    start_msec: u64,
    cfg: GenConfig,
    /// Index of the line `next_line` writes next (its `seq` is index + 1).
    next: u64,
    /// Cumulative referrer weights: direct, search, social (internal is the rest).
    ref_cuts: [f64; 3],
    ref_total: f64,
    /// The syslog header of the second it was last made for (nginx's header has whole seconds).
    header_sec: u64,
    header_buf: Vec<u8>,
}

impl HitGenerator {
    /// Default traffic shape, bare JSON lines; `start_msec` is the event time of the first
    /// hit (ms since the epoch); later ones advance by 1 ms on average.
    pub fn new(seed: u64, start_msec: u64) -> Self {
        Self::with_config(seed, start_msec, GenConfig::default())
    }

    pub fn with_config(seed: u64, start_msec: u64, cfg: GenConfig) -> Self {
        let m = cfg.referrers;
        let w = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
        let cuts = [
            w(m.direct),
            w(m.direct) + w(m.search),
            w(m.direct) + w(m.search) + w(m.social),
        ];
        let total = cuts[2] + w(m.internal);
        HitGenerator {
            seed: splitmix(seed),
            start_msec,
            cfg,
            next: 0,
            ref_cuts: cuts,
            ref_total: total,
            header_sec: u64::MAX,
            header_buf: Vec::new(),
        }
    }

    pub fn config(&self) -> &GenConfig {
        &self.cfg
    }

    /// Makes `next_line` continue at `index` (0-based; the line's `seq` is `index + 1`).
    pub fn seek(&mut self, index: u64) {
        self.next = index;
    }

    /// Writes the next line (without LF) into `out` (cleared first).
    pub fn next_line(&mut self, out: &mut Vec<u8>) {
        out.clear();
        self.append_line(self.next, out);
        self.next += 1;
    }

    /// Appends line `index` (0-based, without LF) to `out`: the same bytes whatever was
    /// generated before.
    pub fn append_line(&mut self, index: u64, out: &mut Vec<u8>) {
        let cfg = &self.cfg;
        let mut rng =
            SmallRng::seed_from_u64(self.seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let on_time = self
            .start_msec
            .saturating_add((index as f64 * cfg.ms_per_event) as u64)
            .saturating_add(rng.gen_range(0..3));
        let msec = if cfg.late_share > 0.0 && rng.gen_bool(cfg.late_share.clamp(0.0, 1.0)) {
            let late = rng.gen_range(60_000..=cfg.late_max_ms.max(60_000));
            on_time.saturating_sub(late)
        } else {
            on_time
        };
        let site_rank = zipf(&mut rng, cfg.sites.max(1) as u64);
        let page = zipf(&mut rng, cfg.urls_per_site.max(1));
        let section = SECTIONS[(page % SECTIONS.len() as u64) as usize];
        let utm = cfg.utm_share > 0.0 && rng.gen_bool(cfg.utm_share.clamp(0.0, 1.0));
        let visitor = zipf(&mut rng, cfg.visitors.max(1));
        let heartbeat = rng.gen_bool(cfg.heartbeat_share.clamp(0.0, 1.0));
        let r: f64 = rng.gen::<f64>() * self.ref_total;
        let ref_class = self.ref_cuts.iter().position(|&c| r < c).unwrap_or(3);
        let ref_pick = rng.gen_range(0..u32::MAX) as usize;
        let ref_page = zipf(&mut rng, cfg.urls_per_site.max(1));
        let inc = INCS[rng.gen_range(0..INCS.len())];
        let event_share = cfg.event_share;

        if self.cfg.header == Header::Syslog {
            // The header carries the send time, not a late event's stamp.
            self.syslog_header(on_time / 1000);
            out.extend_from_slice(&self.header_buf);
        }
        let _ = write!(
            out,
            r#"{{"msec":{}.{:03},"url":""#,
            msec / 1000,
            msec % 1000
        );
        out.extend_from_slice(b"https%3A%2F%2F");
        push_site(out, site_rank);
        let _ = write!(out, "%2F{section}%2F{page}");
        if utm {
            out.extend_from_slice(b"%3Futm_source%3Dnewsletter");
        }
        out.extend_from_slice(br#"","urlref":""#);
        match ref_class {
            0 => {}
            1 => out.extend_from_slice(SEARCH[ref_pick % SEARCH.len()].as_bytes()),
            2 => out.extend_from_slice(SOCIAL[ref_pick % SOCIAL.len()].as_bytes()),
            _ => {
                out.extend_from_slice(b"https%3A%2F%2F");
                push_site(out, site_rank);
                let s = SECTIONS[(ref_page % SECTIONS.len() as u64) as usize];
                let _ = write!(out, "%2F{s}%2F{ref_page}");
            }
        }
        // A visitor keeps its id, browser and address: derived from its rank.
        let vid = splitmix(visitor ^ 0x5bd1_e995);
        let ua = AGENTS[(vid % AGENTS.len() as u64) as usize];
        let _ = write!(out, r#"","vid":"{vid:016x}","action":""#);
        // Drawn last, and only when asked for: every other draw stays as it was.
        let custom = !heartbeat && event_share > 0.0 && rng.gen_bool(event_share.clamp(0.0, 1.0));
        if heartbeat {
            let _ = write!(out, r#"heartbeat","inc":{inc}"#);
        } else if custom {
            let (name, props) = CUSTOM_EVENTS[rng.gen_range(0..CUSTOM_EVENTS.len())];
            let _ = write!(out, r#"event","name":"{name}""#);
            if !props.is_empty() {
                let _ = write!(out, r#","props":"{props}""#);
            }
        } else {
            out.extend_from_slice(br#"pageview""#);
        }
        let _ = write!(
            out,
            r#","ua":"{ua}","ip":"203.0.113.{}","seq":{}}}"#,
            (vid >> 8) % 250 + 1,
            index + 1
        );
    }

    /// Fills `header_buf` with nginx's syslog header for `sec` (epoch seconds, shown as UTC).
    fn syslog_header(&mut self, sec: u64) {
        if sec == self.header_sec {
            return;
        }
        self.header_sec = sec;
        self.header_buf.clear();
        let t = time::OffsetDateTime::from_unix_timestamp(sec.min(253_402_300_799) as i64)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let month = MONTHS[(u8::from(t.month()) as usize).saturating_sub(1) % 12];
        let _ = write!(
            self.header_buf,
            "<190>{month} {:>2} {:02}:{:02}:{:02} pixel: ",
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
    }
}

/// The host of the site of Zipf rank `rank` (1-based).
fn push_site(out: &mut Vec<u8>, rank: u64) {
    match SITES.get((rank - 1) as usize) {
        Some(s) => out.extend_from_slice(s.as_bytes()),
        None => {
            let _ = write!(out, "site{rank}.example.com");
        }
    }
}

/// Zipf-like rank in 1..=n (s ≈ 1): P(k) = ln(1 + 1/k) / ln(n + 1), by inverse transform of a
/// log-uniform draw.
fn zipf(rng: &mut SmallRng, n: u64) -> u64 {
    let u: f64 = rng.gen();
    ((n as f64 + 1.0).powf(u).floor() as u64).clamp(1, n)
}

/// SplitMix64's finaliser: a fixed bijective mix, so nearby ranks give unrelated ids.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::event::{Action, EventConfig, EventParser};
    use std::collections::HashMap;

    const T0: u64 = 1_795_311_543_462;

    fn lines(cfg: GenConfig, n: u64) -> Vec<Vec<u8>> {
        let mut g = HitGenerator::with_config(3, T0, cfg);
        let mut buf = Vec::new();
        (0..n)
            .map(|_| {
                g.next_line(&mut buf);
                buf.clone()
            })
            .collect()
    }

    #[test]
    fn deterministic_and_json() {
        let mut a = HitGenerator::new(1, T0);
        let mut b = HitGenerator::new(1, T0);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..100 {
            a.next_line(&mut x);
            b.next_line(&mut y);
            assert_eq!(x, y);
            let v: serde_json::Value = serde_json::from_slice(&x).expect("valid JSON");
            assert!(v["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("https%3A%2F%2F")));
            assert_eq!(v["seq"], i + 1);
        }
        let mut c = HitGenerator::new(2, T0);
        c.next_line(&mut y);
        assert_ne!(x, y, "another seed, other lines");
    }

    #[test]
    fn any_index_gives_the_same_line_in_any_order() {
        let cfg = GenConfig {
            header: Header::Syslog,
            late_share: 0.1,
            ..GenConfig::default()
        };
        let seq = lines(cfg.clone(), 500);
        let mut g = HitGenerator::with_config(3, T0, cfg);
        let mut buf = Vec::new();
        for i in (0..500u64).rev().step_by(7) {
            buf.clear();
            g.append_line(i, &mut buf);
            assert_eq!(buf, seq[i as usize], "line {i}");
        }
        g.seek(42);
        g.next_line(&mut buf);
        assert_eq!(buf, seq[42]);
    }

    #[test]
    fn every_line_is_an_event_pixeld_aggregates() {
        let cfg = GenConfig {
            header: Header::Syslog,
            late_share: 0.05,
            ..GenConfig::default()
        };
        let mut p = EventParser::new(EventConfig::default());
        for (i, l) in lines(cfg, 5000).iter().enumerate() {
            let s = crate::parse::syslog::parse(l).expect("syslog header parses");
            assert!(
                s.msg.starts_with(b"{\"msec\":"),
                "{}",
                String::from_utf8_lossy(l)
            );
            let e = p.parse(l).unwrap_or_else(|e| panic!("line {i}: {e}"));
            assert!(e.ts_ms.is_some() && !e.bad_timestamp && !e.invalid_utf8);
            assert!(!e.vid.is_empty());
            assert!(!e.url.contains('?'), "utm query dropped: {}", e.url);
            if e.action == Action::Heartbeat {
                assert!(INCS.contains(&e.engaged_seconds));
            }
        }
    }

    /// Custom events take the place of some pageviews, and only when asked for.
    #[test]
    fn custom_events_only_when_asked() {
        let plain = lines(GenConfig::default(), 2000);
        let cfg = GenConfig {
            event_share: 0.2,
            ..GenConfig::default()
        };
        let with = lines(cfg, 2000);
        let cfg = EventConfig {
            custom: vec![("plan".into(), "props.plan".into())],
            ..EventConfig::default()
        };
        let mut p = EventParser::new(cfg);
        let mut names = std::collections::BTreeMap::<String, usize>::new();
        for (a, b) in plain.iter().zip(&with) {
            let e = p.parse(b).expect("a line pixeld reads");
            if e.action == Action::Event {
                let key: Vec<&str> =
                    crate::parse::event::dims::all_values(e.profile, &["plan"]).collect();
                let (name, plan) = (key[crate::parse::event::dims::EVENT], key[key.len() - 1]);
                assert_eq!(plan != "(none)", name == "signup", "{key:?}");
                *names.entry(name.to_string()).or_default() += 1;
                // The same line but for its action.
                let pv = p.parse(a).expect("a line pixeld reads");
                assert_eq!(pv.action, Action::Pageview);
            } else {
                assert_eq!(a, b, "only custom events differ");
            }
        }
        let n: usize = names.values().sum();
        assert!((200..=400).contains(&n), "{names:?}");
        assert_eq!(
            names.keys().collect::<Vec<_>>(),
            ["download", "outbound", "signup"]
        );
        assert!(plain
            .iter()
            .all(|l| !l.windows(7).any(|w| w == b"\"event\"")));
    }

    #[test]
    fn syslog_header_is_nginx_shaped() {
        let mut g = HitGenerator::with_config(
            1,
            1_795_311_543_462, // 2026-11-22T01:39:03.462Z
            GenConfig {
                header: Header::Syslog,
                ms_per_event: 0.0,
                ..GenConfig::default()
            },
        );
        let mut l = Vec::new();
        g.next_line(&mut l);
        assert!(
            l.starts_with(b"<190>Nov 22 01:39:03 pixel: {"),
            "{}",
            String::from_utf8_lossy(&l)
        );
        let mut g = HitGenerator::with_config(
            1,
            1_793_581_200_000, // 2026-11-02T01:00:00Z: the day is space-padded
            GenConfig {
                header: Header::Syslog,
                ms_per_event: 0.0,
                ..GenConfig::default()
            },
        );
        g.next_line(&mut l);
        assert!(
            l.starts_with(b"<190>Nov  2 01:00:0"),
            "{}",
            String::from_utf8_lossy(&l)
        );
    }

    #[test]
    fn distribution_shape() {
        let n = 40_000u64;
        let cfg = GenConfig {
            late_share: 0.1,
            late_max_ms: 600_000,
            ..GenConfig::default()
        };
        let mut urls: HashMap<String, u64> = HashMap::new();
        let mut sites: HashMap<String, u64> = HashMap::new();
        let mut vids: HashMap<String, u64> = HashMap::new();
        let (mut hb, mut late, mut direct, mut search, mut social, mut internal) =
            (0, 0, 0, 0, 0, 0);
        let mut prev_on_time = 0f64;
        for l in lines(cfg, n) {
            let v: serde_json::Value = serde_json::from_slice(&l).expect("JSON");
            let url = v["url"].as_str().expect("url").to_owned();
            let site = url
                .trim_start_matches("https%3A%2F%2F")
                .split('%')
                .next()
                .expect("host")
                .to_owned();
            let r = v["urlref"].as_str().expect("urlref");
            match r {
                "" => direct += 1,
                _ if SEARCH.contains(&r) => search += 1,
                _ if SOCIAL.contains(&r) => social += 1,
                _ => {
                    assert!(
                        r.starts_with(&format!("https%3A%2F%2F{site}%2F")),
                        "internal: {r}"
                    );
                    internal += 1
                }
            }
            if v["action"] == "heartbeat" {
                hb += 1;
            }
            let msec = v["msec"].as_f64().expect("msec") * 1000.0;
            let seq = v["seq"].as_f64().expect("seq");
            let expected = T0 as f64 + (seq - 1.0);
            if msec < expected - 59_000.0 {
                late += 1;
                assert!(msec >= expected - 600_001.0);
            } else {
                assert!((msec - expected).abs() < 4.0, "on time within jitter");
                prev_on_time = msec;
            }
            *urls.entry(url).or_default() += 1;
            *sites.entry(site).or_default() += 1;
            *vids
                .entry(v["vid"].as_str().expect("vid").to_owned())
                .or_default() += 1;
        }
        assert!(prev_on_time > 0.0);
        let share = |x: u64| x as f64 / n as f64;
        let near = |x: u64, want: f64| (share(x) - want).abs() < 0.02;
        assert!(near(hb, 0.25), "heartbeats {}", share(hb));
        assert!(near(late, 0.10), "late {}", share(late));
        assert!(
            near(direct, 0.40) && near(search, 0.30),
            "direct {direct} search {search}"
        );
        assert!(
            near(social, 0.15) && near(internal, 0.15),
            "social {social} internal {internal}"
        );
        // Long tails: the most popular site, url and visitor stand far above the median one,
        // and many keys are seen only once.
        assert_eq!(sites.len(), SITES.len());
        assert!(sites["www.example.com"] > 2 * sites["docs.example.dev"]);
        let mut counts: Vec<u64> = urls.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        assert!(
            counts[0] > 20 * counts[counts.len() / 2],
            "top url {} median {}",
            counts[0],
            counts[counts.len() / 2]
        );
        assert!(counts.iter().filter(|&&c| c == 1).count() > counts.len() / 4);
        let mut v: Vec<u64> = vids.values().copied().collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        assert!(
            v[0] > 100 && v.len() > 5_000,
            "top visitor {} of {}",
            v[0],
            v.len()
        );
    }
}
