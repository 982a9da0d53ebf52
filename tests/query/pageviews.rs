//! The generated pageviews both `dimensions` and `query_api` check pixeld against: a seeded
//! generator of JSON lines on two sites from 400 visitors, each with a real User-Agent of the
//! labelled set `tests/data/ua_set.tsv` (desktop, mobile, tablet and in-app browsers,
//! crawlers and HTTP libraries), a referrer from a table (none, search engines, a social
//! network, webmail, the same site, a blog), now and then utm tags (a newsletter, a paid
//! campaign, a tag-only link), and a client address in one of the networks of a city
//! database the test writes (or in none; with a region or without) — with the value of every dimension of each hit as
//! the model sees it, from the table's labels and never from pixeld's code.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::common::model::{enc, js, msec};

pub const SITES: [&str; 2] = ["news.example", "shop.example"];
pub const DIMS: [&str; 11] = [
    "channel",
    "source",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "device",
    "browser",
    "os",
    "bot",
    "country",
    "region",
];

/// The test's city database (`CC/SUB`: a region, as GeoLite2-City writes it); an address of
/// the last prefix of [`ADDRESSES`] is in none.
pub const NETWORKS: [(&str, &str); 4] = [
    ("192.0.2.0/24", "DE/BY"),
    ("198.51.100.0/24", "AT/9"),
    ("2001:db8::/32", "FR"),
    ("203.0.113.0/25", "US/CA"),
];
/// Address prefixes of the visitors, with the country and region the model expects (the
/// address is the prefix and 1–100).
pub const ADDRESSES: [(&str, &str, &str); 5] = [
    ("192.0.2.", "DE", "DE-BY"),
    ("198.51.100.", "AT", "AT-9"),
    ("2001:db8::", "FR", "(unknown)"),
    ("203.0.113.", "US", "US-CA"),
    ("100.64.0.", "(unknown)", "(unknown)"),
];

/// Referrers (`{site}` is the page's own site) with their channel and source.
pub const REFERRERS: [(&str, &str, &str); 8] = [
    ("", "direct", "(direct)"),
    (
        "https://www.google.de/search?q=x",
        "search",
        "www.google.de",
    ),
    ("https://duckduckgo.com/", "search", "duckduckgo.com"),
    ("https://t.co/abc", "social", "t.co"),
    (
        "https://mail.google.com/mail/u/0/",
        "email",
        "mail.google.com",
    ),
    ("https://{site}/index", "internal", "{site}"),
    (
        "https://blog.example.org/post?id=3",
        "referral",
        "blog.example.org",
    ),
    ("-", "direct", "(direct)"),
];

/// Utm tags of a url (query string, or none) with the channel they decide (None: the
/// referrer's) and the (source, medium, campaign) they give.
#[allow(clippy::type_complexity)]
pub const TAGS: [(&str, Option<&str>, [&str; 3]); 4] = [
    ("", None, ["", "", ""]),
    (
        "utm_source=newsletter&utm_medium=email&utm_campaign=Spring%20Sale",
        Some("email"),
        ["newsletter", "email", "Spring Sale"],
    ),
    (
        "utm_source=google&utm_medium=cpc&utm_campaign=brand",
        Some("paid"),
        ["google", "cpc", "brand"],
    ),
    ("utm_campaign=launch", None, ["", "", "launch"]),
];

/// A labelled User-Agent.
pub struct Agent {
    pub ua: String,
    pub device: String,
    pub browser: String,
    pub os: String,
    pub bot: bool,
}

pub fn agents() -> Vec<Agent> {
    let set = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ua_set.tsv"),
    )
    .unwrap();
    set.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Agent {
                ua: f[0].to_string(),
                device: f[1].to_string(),
                browser: f[2].to_string(),
                os: f[3].to_string(),
                bot: f[4] == "1",
            }
        })
        .collect()
}

/// One hit as the model sees it: site, url (query string dropped), visitor, event time, the
/// value of every pageview dimension (a bot's browser, OS and bot name are pixeld's reading,
/// which the set does not label: see [`value`]) and whether it is a pageview (else a
/// heartbeat).
#[derive(Debug, Clone)]
pub struct View {
    pub site: &'static str,
    pub url: String,
    pub vid: String,
    pub ts: i64,
    pub dims: [String; 11],
    /// The referrer's domain (`(direct)` without one), whatever the tags say.
    pub ref_domain: String,
    pub bot: bool,
    pub pageview: bool,
}

/// Makes `n` lines stamped in one of `windows` (milliseconds before `now_ms`: from, to), and
/// their hits.
pub fn generate(
    seed: u64,
    n: usize,
    now_ms: i64,
    windows: &[(i64, i64)],
    agents: &[Agent],
) -> (Vec<String>, Vec<View>) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut lines = Vec::new();
    let mut views = Vec::new();
    for i in 0..n {
        let site = SITES[rng.gen_range(0..SITES.len())];
        let v = rng.gen_range(0..400u32);
        let vid = format!("v{v}");
        // A visitor keeps one user agent and one address (the US network holds hosts < 128).
        let agent = &agents[(v as usize * 7 + 3) % agents.len()];
        let (prefix, country, region) = ADDRESSES[v as usize % ADDRESSES.len()];
        let ip = format!("{prefix}{}", v % 100 + 1);
        let (rf, ref_channel, ref_source) = REFERRERS[rng.gen_range(0..REFERRERS.len())];
        let rf = rf.replace("{site}", site);
        let ref_source = ref_source.replace("{site}", site);
        let (tags, tag_channel, [src, medium, campaign]) = TAGS[match rng.gen_range(0..10) {
            0 => 1,
            1 => 2,
            2 => 3,
            _ => 0,
        }];
        let page = format!("https://{site}/p{}", rng.gen_range(0..20));
        let url = if tags.is_empty() {
            page.clone()
        } else {
            format!("{page}?{tags}")
        };
        let (lo, hi) = windows[rng.gen_range(0..windows.len())];
        let ts = now_ms - rng.gen_range(lo..hi);
        let heartbeat = rng.gen_range(0..5) == 0;
        let action = if heartbeat { "hb" } else { "pageview" };
        lines.push(format!(
            r#"{{"msec":{},"url":"{}","urlref":"{}","vid":"{vid}","action":"{action}","ua":{},"ip":"{ip}","seq":{i}}}"#,
            msec(ts),
            enc(&url),
            enc(&rf),
            js(&agent.ua),
        ));
        let none = |s: &str| {
            if s.is_empty() {
                "(none)".to_string()
            } else {
                s.to_string()
            }
        };
        let channel = match (tag_channel, ref_channel) {
            (Some(c), _) => c,
            // A tag without a referrer is a campaign link: referral, not direct.
            (None, "direct") if !tags.is_empty() => "referral",
            (None, c) => c,
        };
        let ref_domain = ref_source.clone();
        let source = if src.is_empty() {
            ref_source
        } else {
            src.to_string()
        };
        let (device, browser, os, bot) = if agent.bot {
            ("bot".into(), String::new(), String::new(), String::new())
        } else {
            (
                agent.device.clone(),
                agent.browser.clone(),
                agent.os.clone(),
                "human".to_string(),
            )
        };
        views.push(View {
            site,
            url: page,
            vid,
            ts,
            ref_domain,
            dims: [
                channel.to_string(),
                source,
                none(src),
                none(medium),
                none(campaign),
                device,
                browser,
                os,
                bot,
                country.to_string(),
                region.to_string(),
            ],
            bot: agent.bot,
            pageview: !heartbeat,
        });
    }
    (lines, views)
}
