//! The acquisition channel of a pageview: where the visitor came from, as one of seven values
//! (`search`, `social`, `email`, `paid`, `internal`, `referral`, `direct`) for the "channel"
//! dimension. This module owns the rule table that decides it, the host and tag lists the
//! rules consult ([`RULES_VERSION`] names the table), and the reading of the page's utm tags
//! from its raw query string ([`utm_of`]), which must happen before the url is normalised
//! because `url_keep_query` may drop those parameters from the url dimension.
//!
//! Rules, first match wins ([`classify`]); "medium" and "source" are `utm_medium` and
//! `utm_source`, compared ASCII-case-insensitively:
//! 1. `paid`: the medium is one of `cpc`, `ppc`, `cpm`, `cpv`, `cpa`, `display`, `banner`,
//!    `retargeting`, `affiliate`, or starts with `paid` (`paid`, `paidsearch`, `paid_social`,
//!    `paid-social`, `paidsocial`, ...).
//! 2. `email`: the medium or the source is `email`, `e-mail`, `e_mail`, `e mail`, `mail`,
//!    `gmail` or `newsletter`, or contains `email` or `newsletter`; or the source or the
//!    referrer is a listed webmail host or mail app.
//! 3. `social`: the medium is `social`, `social-network`, `social-media`, `social_media`,
//!    `social_network`, `social media`, `social network` or `sm`; or the source names a listed
//!    social network (`facebook`, `fb`, `x`, `reddit`, ...) or is a listed social host; or
//!    the referrer is one.
//! 4. `search`: the medium is `organic`; or the source names a listed search engine
//!    (`google`, `bing`, `duckduckgo`, ...) or is a search host; or the referrer is one.
//! 5. `internal`: the referrer is the page's own host: equal, or equal once a leading `www.`
//!    is removed from both. Other subdomains of the site are `referral`.
//! 6. `referral`: any other referrer, an unparsable one (`(invalid)`), or no referrer but some
//!    utm tag.
//! 7. `direct`: no referrer (`(direct)`) and no utm tag.
//!
//! Tags come before the referrer on purpose: a tagged link says what the site owner meant
//! (a `cpc` click from Google is paid, not search), while the referrer only says which host
//! the browser left. Click ids (`gclid`, `fbclid`, `msclkid`) are not read; a paid click is
//! recognised only by its medium.
//!
//! A referrer host is classified by [`domain_class`] from lists looked up (one hash map of the
//! three host lists) on the host and on each of its parent domains, the most specific listed domain
//! winning (so `mail.google.com` is email while `www.google.com` is search). Search engines
//! with country domains (`google`, `bing`, `yahoo`, `yandex`, `baidu`) are matched by brand
//! label instead of by listing every country: the label followed by one or two labels of 2–3
//! ASCII letters (`google.de`, `google.co.uk`, `google.com.br`, `yandex.com.tr`), and preceded
//! by nothing or by one of `www`, `m`, `search`, `images`, `news`, `lens`, `scholar`. That is
//! a simplification of the public suffix list: it also accepts the brand under a short
//! suffix Google does not own, and it leaves the brand's other services (`docs.google.com`,
//! `support.google.com`, `tieba.baidu.com`) to `referral`. Pinterest is matched the same way
//! but with any prefix (`de.pinterest.com`, `pinterest.co.uk`). Android app referrers, which
//! arrive as `android-app://com.google.android.gm` or, once reduced to a host, as
//! `com.google.android.gm`, are looked up by package name (and its parent packages).
//!
//! The lists are short on purpose (the ~70 hosts that carry most traffic, not GA4's
//! thousand); they were chosen from Plausible's `priv/ga4-source-categories.csv` and the
//! categories in `lib/plausible/ingestion/acquisition.ex` (plausible/analytics), and from
//! PostHog's `posthog/models/channel_type/channel_definitions.json` and the rule order in
//! `posthog/hogql/database/schema/channel_type.py` (PostHog/posthog). Differences from both:
//! video sites (YouTube) count as `social` as there is no video channel; Hacker News is
//! `social`, as in both; webmail hosts that GA4 files under search (`mail.yandex.ru`,
//! `email.seznam.cz`) are `email`; there are no shopping, video, audio, SMS, push or AI
//! channels, which fall to `referral`. `config/channels.md` is the user-facing copy of this
//! table; change both, and bump [`RULES_VERSION`], when a rule changes an outcome.
//!
//! Nothing here panics or trusts its input, and [`classify`] does not allocate;
//! [`domain_class`] allocates only for a name with upper-case letters (a referrer host is
//! lower-cased before, a `utm_source` may not be), [`utm_of`] only for tags that are present.

use std::cmp::Ordering;
use std::sync::OnceLock;

use hashbrown::HashMap;

use super::url::hex;

/// Version of the shipped rule table; bumped whenever a rule changes what a pageview is
/// classified as.
pub const RULES_VERSION: u32 = 1;

/// The longest utm value kept, in bytes (cut at a character boundary).
const UTM_MAX_BYTES: usize = 100;

/// Where a pageview came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    Search,
    Social,
    Email,
    Paid,
    Internal,
    Referral,
    Direct,
}

impl Channel {
    /// Every channel, in declaration order.
    pub const ALL: [Channel; 7] = [
        Channel::Search,
        Channel::Social,
        Channel::Email,
        Channel::Paid,
        Channel::Internal,
        Channel::Referral,
        Channel::Direct,
    ];

    /// The channel's code in the url × channel cells (`agg`): 1 + its place in [`Channel::ALL`]
    /// (0 stands for none: not a pageview).
    pub fn code(self) -> u8 {
        Channel::ALL
            .iter()
            .position(|&c| c == self)
            .map_or(0, |i| i as u8 + 1)
    }

    /// The channel of a code ([`Channel::code`]).
    pub fn from_code(code: u8) -> Option<Channel> {
        Channel::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }

    /// The channel's name in the dimension: `"search"`, `"social"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Search => "search",
            Channel::Social => "social",
            Channel::Email => "email",
            Channel::Paid => "paid",
            Channel::Internal => "internal",
            Channel::Referral => "referral",
            Channel::Direct => "direct",
        }
    }
}

/// The utm tags of a url, from its raw query string (before the url is normalised, so tags are
/// read even when `url_keep_query` drops them from the url dimension): `utm_source`,
/// `utm_medium`, `utm_campaign`; the first occurrence of each wins; values percent-decoded and
/// `+` as space, invalid UTF-8 repaired (U+FFFD), trimmed, at most 100 bytes (cut at a char
/// boundary); empty when absent. Keys match case-insensitively. A `#fragment` ends the query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Utm {
    pub source: String,
    pub medium: String,
    pub campaign: String,
}

impl Utm {
    /// True when the url had none of the three tags (or only empty ones).
    pub fn is_empty(&self) -> bool {
        self.source.is_empty() && self.medium.is_empty() && self.campaign.is_empty()
    }
}

/// Reads the utm tags of `url` (see [`Utm`]). A key's first occurrence wins even when its value
/// is empty; a pair without `=` has an empty value.
pub fn utm_of(url: &str) -> Utm {
    // Most urls have no query at all: one search says so.
    if memchr::memchr(b'?', url.as_bytes()).is_none() {
        return Utm::default();
    }
    let before_fragment = url.split_once('#').map_or(url, |(head, _)| head);
    let query = before_fragment.split_once('?').map_or("", |(_, q)| q);
    let mut utm = Utm::default();
    let (mut source, mut medium, mut campaign) = (false, false, false);
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = if !source && key.eq_ignore_ascii_case("utm_source") {
            source = true;
            &mut utm.source
        } else if !medium && key.eq_ignore_ascii_case("utm_medium") {
            medium = true;
            &mut utm.medium
        } else if !campaign && key.eq_ignore_ascii_case("utm_campaign") {
            campaign = true;
            &mut utm.campaign
        } else {
            continue;
        };
        *slot = tag_value(value);
        if source && medium && campaign {
            break;
        }
    }
    utm
}

/// One query value decoded (`+` as space, `%XX` escapes; a `%` without two hex digits kept),
/// repaired, trimmed and cut to [`UTM_MAX_BYTES`].
fn tag_value(raw: &str) -> String {
    if raw.is_empty() {
        return String::new();
    }
    let src = raw.as_bytes();
    let mut bytes = Vec::with_capacity(src.len());
    let mut i = 0;
    while let Some(&b) = src.get(i) {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let h = src.get(i + 1).copied().and_then(hex);
                let l = src.get(i + 2).copied().and_then(hex);
                if let (Some(h), Some(l)) = (h, l) {
                    bytes.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                bytes.push(b'%');
            }
            _ => bytes.push(b),
        }
        i += 1;
    }
    let text = String::from_utf8_lossy(&bytes);
    let trimmed = text.trim();
    let mut cut = trimmed.len().min(UTM_MAX_BYTES);
    while !trimmed.is_char_boundary(cut) {
        cut -= 1;
    }
    trimmed.get(..cut).unwrap_or_default().trim_end().to_owned()
}

/// What a referrer domain alone says: Some(Search | Social | Email) for a known search engine,
/// social network or webmail host, None otherwise. `ref_domain` is a lower-case host without
/// port (e.g. "www.google.de", "m.facebook.com", "t.co", "l.instagram.com",
/// "android-app://com.google.android.gm" may appear as-is too), or "(direct)" / "(invalid)".
/// Matches a host and any subdomain of a listed domain; country variants of search engines
/// (google.de, google.co.uk, yandex.ru, …) must match without listing every TLD.
///
/// Lookups are ASCII-case-insensitive and one trailing `.` is ignored.
pub fn domain_class(ref_domain: &str) -> Option<Channel> {
    let d = ref_domain.strip_suffix('.').unwrap_or(ref_domain);
    if d.is_empty() || d.starts_with('(') {
        return None;
    }
    // Referrer hosts arrive lower-cased (`cache::fill_referrer`); a tag may not.
    if d.bytes().any(|b| b.is_ascii_uppercase()) {
        return domain_class_lower(&d.to_ascii_lowercase());
    }
    domain_class_lower(d)
}

/// [`domain_class`] of a lower-case `d`, without its trailing dot.
fn domain_class_lower(d: &str) -> Option<Channel> {
    if let Some((_scheme, rest)) = d.split_once("://") {
        // An app referrer (`android-app://<package>[/...]`): only the package says anything.
        let package = rest.split(['/', '?', '#']).next().unwrap_or_default();
        return app_class(package);
    }
    host_class(d)
        .or_else(|| brand_class(d))
        .or_else(|| app_class(d))
}

/// The class of the most specific listed domain among `host` (lower-case) and its parents.
fn host_class(host: &str) -> Option<Channel> {
    // Built on the first call; every later one reads it after one atomic load (no lock).
    static HOSTS: OnceLock<HashMap<&'static str, Channel>> = OnceLock::new();
    let hosts = HOSTS.get_or_init(|| {
        // The three lists do not overlap (a unit test checks it).
        [
            (EMAIL_HOSTS, Channel::Email),
            (SOCIAL_HOSTS, Channel::Social),
            (SEARCH_HOSTS, Channel::Search),
        ]
        .into_iter()
        .flat_map(|(list, class)| list.iter().map(move |h| (*h, class)))
        .collect()
    });
    let mut h = host;
    loop {
        if let Some(class) = hosts.get(h) {
            return Some(*class);
        }
        match h.split_once('.') {
            Some((_, parent)) if !parent.is_empty() => h = parent,
            _ => return None,
        }
    }
}

/// A brand label followed by one or two short suffix labels (see the module doc); `host` is
/// lower-case.
fn brand_class(host: &str) -> Option<Channel> {
    let mut rest = host;
    for _ in 0..2 {
        let (head, label) = rest.rsplit_once('.')?;
        if !(2..=3).contains(&label.len()) || !label.bytes().all(|b| b.is_ascii_alphabetic()) {
            return None;
        }
        rest = head;
        let (prefix, brand) = match rest.rsplit_once('.') {
            Some((prefix, brand)) => (Some(prefix), brand),
            None => (None, rest),
        };
        if SEARCH_BRANDS.contains(&brand) && prefix.is_none_or(|p| SEARCH_PREFIXES.contains(&p)) {
            return Some(Channel::Search);
        }
        if SOCIAL_BRANDS.contains(&brand) {
            return Some(Channel::Social);
        }
    }
    None
}

/// The class of an Android package (lower-case) or of its nearest listed parent package.
fn app_class(package: &str) -> Option<Channel> {
    // One pass over the short list, not a binary search per parent package: the longest
    // listed name that is `package` or a parent. With the hosts' map, `domain_class` went
    // from 2 785 to 1 289 instructions a call (callgrind of a rebuild).
    APPS.iter()
        .filter(|(name, _)| {
            package
                .strip_prefix(name)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        })
        .max_by_key(|(name, _)| name.len())
        .map(|(_, class)| *class)
}

/// The channel of one pageview on `site` (the page's lower-case host) from `ref_domain` (as
/// above) with `class` = domain_class(ref_domain) (passed in so that callers can cache it per
/// referrer) and the page's utm tags.
///
/// `class` values other than Search, Social and Email are ignored. An empty `ref_domain` is
/// taken as `(direct)`.
pub fn classify(site: &str, ref_domain: &str, class: Option<Channel>, utm: &Utm) -> Channel {
    let (source, medium) = (utm.source.as_str(), utm.medium.as_str());
    if listed(PAID_MEDIUMS, medium) || starts_with_ci(medium, "paid") {
        return Channel::Paid;
    }
    let source_class = source_class(source);
    if is_email_tag(medium)
        || is_email_tag(source)
        || source_class == Some(Channel::Email)
        || class == Some(Channel::Email)
    {
        return Channel::Email;
    }
    if listed(SOCIAL_MEDIUMS, medium)
        || source_class == Some(Channel::Social)
        || class == Some(Channel::Social)
    {
        return Channel::Social;
    }
    if medium.eq_ignore_ascii_case("organic")
        || source_class == Some(Channel::Search)
        || class == Some(Channel::Search)
    {
        return Channel::Search;
    }
    if is_internal(site, ref_domain) {
        return Channel::Internal;
    }
    match ref_domain {
        "" | "(direct)" if utm.is_empty() => Channel::Direct,
        _ => Channel::Referral,
    }
}

/// What `utm_source` names: a listed social network or search engine, or a host (or app) that
/// [`domain_class`] knows.
fn source_class(source: &str) -> Option<Channel> {
    if source.is_empty() {
        None
    } else if listed(SOCIAL_SOURCES, source) {
        Some(Channel::Social)
    } else if listed(SEARCH_SOURCES, source) {
        Some(Channel::Search)
    } else if source.contains('.') {
        domain_class(source)
    } else {
        None
    }
}

fn is_email_tag(tag: &str) -> bool {
    listed(EMAIL_TAGS, tag) || contains_ci(tag, "email") || contains_ci(tag, "newsletter")
}

fn is_internal(site: &str, ref_domain: &str) -> bool {
    let (s, r) = (strip_www(site), strip_www(ref_domain));
    !s.is_empty() && s.eq_ignore_ascii_case(r)
}

fn strip_www(host: &str) -> &str {
    match (host.get(..4), host.get(4..)) {
        (Some(www), Some(rest)) if www.eq_ignore_ascii_case("www.") => rest,
        _ => host,
    }
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// `needle` is a non-empty lower-case ASCII constant.
fn contains_ci(hay: &str, needle: &str) -> bool {
    let n = needle.as_bytes();
    !n.is_empty()
        && hay
            .as_bytes()
            .windows(n.len())
            .any(|w| w.eq_ignore_ascii_case(n))
}

/// Whether `key`, ASCII-lower-cased, is in `list` (sorted, lower-case).
fn listed(list: &[&str], key: &str) -> bool {
    !key.is_empty() && list.binary_search_by(|probe| cmp_lower(probe, key)).is_ok()
}

/// Orders `probe` (lower-case) against `key` as if `key` were ASCII-lower-cased.
fn cmp_lower(probe: &str, key: &str) -> Ordering {
    probe
        .bytes()
        .cmp(key.bytes().map(|b| b.to_ascii_lowercase()))
}

// The rule table. Every list is sorted (byte order), lower-case and without duplicates; the
// unit tests check that, and that the host lists do not overlap.

/// `utm_medium` values for `paid` (besides any medium starting with `paid`).
const PAID_MEDIUMS: &[&str] = &[
    "affiliate",
    "banner",
    "cpa",
    "cpc",
    "cpm",
    "cpv",
    "display",
    "ppc",
    "retargeting",
];

/// `utm_medium` or `utm_source` values for `email` (besides any containing `email` or
/// `newsletter`).
const EMAIL_TAGS: &[&str] = &[
    "e mail",
    "e-mail",
    "e_mail",
    "email",
    "gmail",
    "mail",
    "newsletter",
];

/// `utm_medium` values for `social`.
const SOCIAL_MEDIUMS: &[&str] = &[
    "sm",
    "social",
    "social media",
    "social network",
    "social-media",
    "social-network",
    "social_media",
    "social_network",
];

/// `utm_source` values naming a social network.
const SOCIAL_SOURCES: &[&str] = &[
    "bluesky",
    "bsky",
    "discord",
    "facebook",
    "fb",
    "hacker news",
    "hackernews",
    "ig",
    "instagram",
    "linkedin",
    "mastodon",
    "pinterest",
    "quora",
    "reddit",
    "snapchat",
    "telegram",
    "threads",
    "tiktok",
    "twitter",
    "vk",
    "weibo",
    "whatsapp",
    "x",
    "youtube",
];

/// `utm_source` values naming a search engine.
const SEARCH_SOURCES: &[&str] = &[
    "baidu",
    "bing",
    "brave",
    "duckduckgo",
    "ecosia",
    "google",
    "kagi",
    "mojeek",
    "naver",
    "qwant",
    "seznam",
    "sogou",
    "startpage",
    "yahoo",
    "yandex",
];

/// Webmail hosts (and their subdomains).
const EMAIL_HOSTS: &[&str] = &[
    "app.fastmail.com",
    "app.tuta.com",
    "e.mail.ru",
    "email.seznam.cz",
    "mail.aol.com",
    "mail.google.com",
    "mail.naver.com",
    "mail.proton.me",
    "mail.yahoo.co.jp",
    "mail.yahoo.com",
    "mail.yandex.com",
    "mail.yandex.ru",
    "mail.zoho.com",
    "outlook.live.com",
    "outlook.office.com",
    "outlook.office365.com",
];

/// Social networks, forums and messengers (and their subdomains). Hacker News is here, as in
/// Plausible and PostHog: its traffic behaves like a social network's (a burst from a shared
/// link), not like a site that links to you.
const SOCIAL_HOSTS: &[&str] = &[
    "bsky.app",
    "discord.com",
    "discord.gg",
    "facebook.com",
    "fb.com",
    "fb.me",
    "instagram.com",
    "linkedin.com",
    "lnkd.in",
    "lobste.rs",
    "mastodon.online",
    "mastodon.social",
    "messenger.com",
    "news.ycombinator.com",
    "ok.ru",
    "pin.it",
    "quora.com",
    "redd.it",
    "reddit.com",
    "snapchat.com",
    "t.co",
    "t.me",
    "telegram.org",
    "threads.com",
    "threads.net",
    "tiktok.com",
    "tumblr.com",
    "twitter.com",
    "vk.com",
    "wa.me",
    "weibo.com",
    "whatsapp.com",
    "x.com",
    "xing.com",
    "youtu.be",
    "youtube.com",
];

/// Search engines without country domains (and their subdomains), and hosts of the brands
/// below that the brand rule's prefixes miss.
const SEARCH_HOSTS: &[&str] = &[
    "ask.com",
    "cn.bing.com",
    "duckduckgo.com",
    "ecosia.org",
    "kagi.com",
    "mojeek.com",
    "naver.com",
    "qwant.com",
    "search.aol.com",
    "search.brave.com",
    "search.yahoo.com",
    "seznam.cz",
    "so.com",
    "sogou.com",
    "startpage.com",
    "ya.ru",
];

/// Search-engine brand labels matched under any short suffix (`google.de`, `google.co.uk`).
const SEARCH_BRANDS: &[&str] = &["baidu", "bing", "google", "yahoo", "yandex"];

/// The one label that may precede a search brand (`www.google.de`, `news.google.com`).
const SEARCH_PREFIXES: &[&str] = &["images", "lens", "m", "news", "scholar", "search", "www"];

/// Social brand labels matched under any short suffix and with any prefix.
const SOCIAL_BRANDS: &[&str] = &["pinterest"];

/// Android packages (and their sub-packages, e.g. `com.google.android.gm.lite`).
const APPS: &[(&str, Channel)] = &[
    ("ch.protonmail.android", Channel::Email),
    ("com.facebook.katana", Channel::Social),
    ("com.facebook.orca", Channel::Social),
    ("com.google.android.gm", Channel::Email),
    ("com.google.android.googlequicksearchbox", Channel::Search),
    ("com.google.android.youtube", Channel::Social),
    ("com.instagram.android", Channel::Social),
    ("com.linkedin.android", Channel::Social),
    ("com.microsoft.office.outlook", Channel::Email),
    ("com.reddit.frontpage", Channel::Social),
    ("com.twitter.android", Channel::Social),
    ("com.whatsapp", Channel::Social),
    ("com.yahoo.mobile.client.android.mail", Channel::Email),
    ("com.zhiliaoapp.musically", Channel::Social),
    ("org.telegram.messenger", Channel::Social),
];

#[cfg(test)]
mod tests {
    use super::Channel::*;
    use super::*;

    #[test]
    fn codes_round_trip_and_zero_is_none() {
        for c in Channel::ALL {
            assert!((1..=7).contains(&c.code()));
            assert_eq!(Channel::from_code(c.code()), Some(c));
        }
        assert_eq!(Channel::from_code(0), None);
        assert_eq!(Channel::from_code(8), None);
    }
    use proptest::prelude::*;

    /// (site, ref_domain, page url (only its query matters), expected channel).
    const CASES: &[(&str, &str, &str, Channel)] = &[
        // direct and internal
        ("example.com", "(direct)", "/", Direct),
        ("example.com", "", "/a?b=c", Direct),
        ("example.com", "(direct)", "/?utm_source=", Direct),
        ("example.com", "example.com", "/", Internal),
        ("example.com", "www.example.com", "/", Internal),
        (
            "www.example.com",
            "example.com",
            "https://www.example.com/",
            Internal,
        ),
        (
            "www.example.com",
            "www.example.com",
            "https://www.example.com/",
            Internal,
        ),
        ("example.com", "blog.example.com", "/", Referral),
        ("example.com", "example.com", "/?utm_source=foo", Internal),
        // search by referrer
        ("example.com", "google.com", "/", Search),
        ("example.com", "www.google.com", "/", Search),
        ("example.com", "google.de", "/", Search),
        ("example.com", "www.google.co.uk", "/", Search),
        ("example.com", "google.com.br", "/", Search),
        ("example.com", "news.google.com", "/", Search),
        ("example.com", "duckduckgo.com", "/", Search),
        ("example.com", "html.duckduckgo.com", "/", Search),
        ("example.com", "www.bing.com", "/", Search),
        ("example.com", "cn.bing.com", "/", Search),
        ("example.com", "yandex.ru", "/", Search),
        ("example.com", "yandex.com.tr", "/", Search),
        ("example.com", "de.search.yahoo.com", "/", Search),
        ("example.com", "search.brave.com", "/", Search),
        ("example.com", "www.ecosia.org", "/", Search),
        ("example.com", "docs.google.com", "/", Referral),
        ("example.com", "google.blogspot.com", "/", Referral),
        ("example.com", "brave.com", "/", Referral),
        // social by referrer
        ("example.com", "t.co", "/", Social),
        ("example.com", "x.com", "/", Social),
        ("example.com", "m.facebook.com", "/", Social),
        ("example.com", "l.facebook.com", "/", Social),
        ("example.com", "lm.facebook.com", "/", Social),
        ("example.com", "l.instagram.com", "/", Social),
        ("example.com", "old.reddit.com", "/", Social),
        ("example.com", "news.ycombinator.com", "/", Social),
        ("example.com", "de.pinterest.com", "/", Social),
        ("example.com", "pinterest.co.uk", "/", Social),
        ("example.com", "www.youtube.com", "/", Social),
        ("example.com", "bsky.app", "/", Social),
        ("example.com", "com.reddit.frontpage", "/", Social),
        // email by referrer
        ("example.com", "mail.google.com", "/", Email),
        ("example.com", "outlook.live.com", "/", Email),
        ("example.com", "mail.yandex.ru", "/", Email),
        (
            "example.com",
            "android-app://com.google.android.gm",
            "/",
            Email,
        ),
        ("example.com", "com.google.android.gm", "/", Email),
        ("example.com", "com.google.android.gm.lite", "/", Email),
        // tags
        ("example.com", "www.google.com", "/?utm_medium=cpc", Paid),
        ("example.com", "google.com", "/?utm_medium=PPC", Paid),
        ("example.com", "(direct)", "/?utm_medium=paid_social", Paid),
        ("example.com", "(direct)", "/?utm_medium=Paid-Search", Paid),
        ("example.com", "t.co", "/?utm_medium=display", Paid),
        ("example.com", "(direct)", "/?utm_source=newsletter", Email),
        (
            "example.com",
            "(direct)",
            "/?utm_source=Weekly%20Newsletter",
            Email,
        ),
        ("example.com", "t.co", "/?utm_medium=e-mail", Email),
        ("example.com", "(direct)", "/?utm_medium=EMAIL", Email),
        ("example.com", "(direct)", "/?utm_source=facebook", Social),
        ("example.com", "(direct)", "/?utm_source=FaceBook", Social),
        ("example.com", "(direct)", "/?utm_source=x.com", Social),
        (
            "example.com",
            "(direct)",
            "/?utm_medium=social-media",
            Social,
        ),
        ("example.com", "(direct)", "/?utm_source=Google", Search),
        ("example.com", "(direct)", "/?utm_medium=organic", Search),
        ("example.com", "(direct)", "/?utm_source=acme", Referral),
        ("example.com", "(direct)", "/?utm_campaign=spring", Referral),
        ("example.com", "(direct)", "/#?utm_source=facebook", Direct),
        ("example.com", "(direct)", "/?a=1#&utm_medium=cpc", Direct),
        ("example.com", "google.com", "/?utm_medium=cp%63", Paid),
        // referral
        ("example.com", "someblog.net", "/", Referral),
        ("example.com", "(invalid)", "/", Referral),
        (
            "example.com",
            "android-app://com.example.app",
            "/",
            Referral,
        ),
    ];

    #[test]
    fn classify_table() {
        assert!(CASES.len() >= 50);
        for &(site, ref_domain, url, want) in CASES {
            let utm = utm_of(url);
            let got = classify(site, ref_domain, domain_class(ref_domain), &utm);
            assert_eq!(
                got, want,
                "site {site:?} ref {ref_domain:?} url {url:?} -> {utm:?}"
            );
        }
    }

    fn utm(source: &str, medium: &str, campaign: &str) -> Utm {
        Utm {
            source: source.into(),
            medium: medium.into(),
            campaign: campaign.into(),
        }
    }

    #[test]
    fn utm_of_table() {
        let cases: &[(&str, Utm)] = &[
            ("https://example.com/", Utm::default()),
            ("https://example.com/?", Utm::default()),
            ("https://example.com/?a=1&b", Utm::default()),
            (
                "https://example.com/?utm_source=a&utm_medium=b&utm_campaign=c",
                utm("a", "b", "c"),
            ),
            (
                "/p?UTM_Source=News&Utm_Medium=EMAIL",
                utm("News", "EMAIL", ""),
            ),
            ("/p?utm_source=a&utm_source=b", utm("a", "", "")),
            ("/p?utm_source=&utm_source=b", utm("", "", "")),
            ("/p?utm_source", utm("", "", "")),
            (
                "/p?utm_campaign=spring+sale%21",
                utm("", "", "spring sale!"),
            ),
            ("/p?utm_source=%20%20a%20b+", utm("a b", "", "")),
            ("/p?utm_source=caf%C3%A9", utm("café", "", "")),
            ("/p?utm_source=a%FFb", utm("a\u{FFFD}b", "", "")),
            ("/p?utm_source=%C3", utm("\u{FFFD}", "", "")),
            (
                "/p?utm_source=100%25&utm_medium=%zz%4",
                utm("100%", "%zz%4", ""),
            ),
            ("/p?utm_source=a=b", utm("a=b", "", "")),
            ("/p#x?utm_source=a", Utm::default()),
            ("/p?utm_source=a#utm_medium=b", utm("a", "", "")),
            ("/p?utm_source=a#&utm_medium=b", utm("a", "", "")),
        ];
        for (url, want) in cases {
            assert_eq!(&utm_of(url), want, "{url:?}");
        }
        assert!(utm_of("/").is_empty());
        assert!(!utm_of("/?utm_campaign=x").is_empty());
    }

    #[test]
    fn utm_values_are_cut_at_a_char_boundary() {
        // 10 KB of two-byte characters after one ASCII byte: 100 bytes would split one.
        let long = format!("/p?utm_source=a{}&utm_medium=b", "%C3%A9".repeat(5000));
        let u = utm_of(&long);
        assert_eq!(u.source.len(), 99);
        assert_eq!(u.source, format!("a{}", "é".repeat(49)));
        assert_eq!(u.medium, "b");
        let raw = format!("/p?utm_source={}", "€".repeat(4000));
        assert_eq!(utm_of(&raw).source, "€".repeat(33));
        let ascii = format!("/p?utm_campaign={}", "x".repeat(10_000));
        assert_eq!(utm_of(&ascii).campaign.len(), 100);
        // Whitespace left at the cut is trimmed too.
        let spaced = format!("/p?utm_source={}+b", "a".repeat(99));
        assert_eq!(utm_of(&spaced).source, "a".repeat(99));
    }

    #[test]
    fn domain_class_table() {
        let cases: &[(&str, Option<Channel>)] = &[
            ("(direct)", None),
            ("(invalid)", None),
            ("", None),
            (".", None),
            ("google", None),
            ("www.google.com.", Some(Search)),
            ("WWW.Google.DE", Some(Search)),
            ("google.cat", Some(Search)),
            ("images.google.fr", Some(Search)),
            ("support.google.com", None),
            ("sites.google.com", None),
            ("google.com.evil.io", None),
            ("evilgoogle.com", None),
            ("m.baidu.com", Some(Search)),
            ("tieba.baidu.com", None),
            ("yahoo.co.jp", Some(Search)),
            ("mail.yahoo.com", Some(Email)),
            ("email.seznam.cz", Some(Email)),
            ("www.seznam.cz", Some(Search)),
            ("outlook.office365.com", Some(Email)),
            ("facebook.com", Some(Social)),
            ("notfacebook.com", None),
            ("facebook.com.evil.io", None),
            ("t.co", Some(Social)),
            ("t.com", None),
            ("pinterest.com.au", Some(Social)),
            ("android-app://com.google.android.gm/", Some(Email)),
            (
                "android-app://com.google.android.googlequicksearchbox",
                Some(Search),
            ),
            ("android-app://", None),
            ("ios-app://123456/", None),
            ("com.whatsapp", Some(Social)),
            ("com.whatsapp.w4b", Some(Social)),
            ("com.whatsappx", None),
            ("COM.WhatsApp", Some(Social)),
            ("Mail.Yahoo.COM.", Some(Email)),
            ("com", None),
            ("..", None),
        ];
        for &(d, want) in cases {
            assert_eq!(domain_class(d), want, "{d:?}");
        }
    }

    #[test]
    fn channel_names() {
        let names: Vec<&str> = Channel::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            ["search", "social", "email", "paid", "internal", "referral", "direct"]
        );
    }

    fn assert_sorted_lower(name: &str, list: &[&str]) {
        for pair in list.windows(2) {
            assert!(
                pair[0] < pair[1],
                "{name}: {pair:?} out of order or duplicate"
            );
        }
        for s in list {
            assert!(
                !s.is_empty() && *s == s.to_ascii_lowercase(),
                "{name}: {s:?}"
            );
        }
    }

    #[test]
    fn lists_are_sorted_lower_case_and_disjoint() {
        let lists: &[(&str, &[&str])] = &[
            ("PAID_MEDIUMS", PAID_MEDIUMS),
            ("EMAIL_TAGS", EMAIL_TAGS),
            ("SOCIAL_MEDIUMS", SOCIAL_MEDIUMS),
            ("SOCIAL_SOURCES", SOCIAL_SOURCES),
            ("SEARCH_SOURCES", SEARCH_SOURCES),
            ("EMAIL_HOSTS", EMAIL_HOSTS),
            ("SOCIAL_HOSTS", SOCIAL_HOSTS),
            ("SEARCH_HOSTS", SEARCH_HOSTS),
            ("SEARCH_BRANDS", SEARCH_BRANDS),
            ("SEARCH_PREFIXES", SEARCH_PREFIXES),
            ("SOCIAL_BRANDS", SOCIAL_BRANDS),
        ];
        for (name, list) in lists {
            assert_sorted_lower(name, list);
        }
        let apps: Vec<&str> = APPS.iter().map(|(name, _)| *name).collect();
        assert_sorted_lower("APPS", &apps);
        let hosts = [EMAIL_HOSTS, SOCIAL_HOSTS, SEARCH_HOSTS];
        for (i, a) in hosts.iter().enumerate() {
            for b in hosts.iter().skip(i + 1) {
                for h in *a {
                    assert!(!b.contains(h), "{h} listed twice");
                }
            }
        }
        let total: usize = hosts.iter().map(|l| l.len()).sum();
        assert!((40..=80).contains(&total), "{total} hosts");
        // Every listed host classifies as its list says (no brand or parent overrides it).
        for (list, want) in [
            (EMAIL_HOSTS, Email),
            (SOCIAL_HOSTS, Social),
            (SEARCH_HOSTS, Search),
        ] {
            for h in list {
                assert_eq!(domain_class(h), Some(want), "{h}");
            }
        }
        for (name, want) in APPS {
            assert_eq!(domain_class(name), Some(*want), "{name}");
        }
    }

    /// Url-like strings that reach the utm decoder: keys in several cases, escapes (valid,
    /// truncated, non-UTF-8), `+`, long runs, fragments.
    fn utm_url() -> impl Strategy<Value = String> {
        "[a-z:/.]{0,12}\\?(((utm_(source|medium|campaign)|UTM_Source|x)=((%[0-9a-fA-F]{2})|%|[+& a-z0-9]|\\PC){0,200})&?){0,4}(#.*)?"
    }

    proptest! {
        #[test]
        fn never_panics_on_any_string(url in ".*", site in ".*", ref_domain in ".*") {
            for u in [utm_of(&url), utm_of(&ref_domain)] {
                for v in [&u.source, &u.medium, &u.campaign] {
                    prop_assert!(v.len() <= UTM_MAX_BYTES);
                }
                let class = domain_class(&ref_domain);
                let c = classify(&site, &ref_domain, class, &u);
                prop_assert!(Channel::ALL.contains(&c));
                let _ = domain_class(&site);
            }
        }

        #[test]
        fn utm_values_are_bounded_and_trimmed(url in utm_url(), site in "[a-z.]{0,20}") {
            let u = utm_of(&url);
            for v in [&u.source, &u.medium, &u.campaign] {
                prop_assert!(v.len() <= UTM_MAX_BYTES);
                prop_assert_eq!(v.trim(), v.as_str());
            }
            for class in [None, Some(Search), Some(Social), Some(Email), Some(Paid)] {
                let c = classify(&site, "(direct)", class, &u);
                prop_assert!(c != Direct || u.is_empty());
            }
        }
    }
}
