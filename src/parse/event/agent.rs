//! What a User-Agent header says: the device class, browser and operating system of a
//! pageview, and whether a bot sent it — three dimensions and the bot flag of `dims`.
//!
//! `woothee` reads the header (a rule set in code: about 1.3 µs per header and 1 MiB, against
//! 10 µs and 25 MiB per shard for `ua-parser` with uap-core's regexes, which names a few more
//! browsers — Facebook's and Instagram's in-app views, Silk, UC — on a labelled set of 219
//! real headers; the comparison is in the README, "Dimensions"). Four things are added
//! around it:
//! - **bots**: woothee knows the big crawlers but not today's fetchers, previews, AI agents
//!   and HTTP libraries; a shipped list of lower-case substrings ([`BOT_MARKS`]) catches
//!   them (every bot of the labelled set; of the 8 832 browser headers in uap-core's tests
//!   it flags one, "Google Web Preview", itself a fetcher);
//! - **tablets**: an Android header without `Mobile` (Chrome, Samsung Internet and Edge drop
//!   it on tablets) and iPads;
//! - **in-app browsers** woothee calls `Webview` or Chrome: Facebook, Instagram, Silk, UC
//!   Browser, Samsung Internet;
//! - canonical family names (`macOS`, `iOS`, `Windows`, …) so that a breakdown is short.
//!
//! Headers repeat heavily, so the parser classifies each distinct header once (`cache`).

use woothee::parser::Parser;

/// Device classes.
pub const DESKTOP: &str = "desktop";
pub const MOBILE: &str = "mobile";
pub const TABLET: &str = "tablet";
pub const BOT: &str = "bot";
pub const UNKNOWN: &str = "(unknown)";

/// Lower-case substrings that make a header a bot's, with the name it is counted under
/// (`None`: the substring itself). Matched after woothee's own crawler rules.
pub const BOT_MARKS: &[(&str, Option<&str>)] = &[
    ("googlebot", Some("Googlebot")),
    ("google-inspectiontool", Some("Google-InspectionTool")),
    ("googleother", Some("GoogleOther")),
    ("storebot-google", Some("Storebot-Google")),
    ("apis-google", Some("APIs-Google")),
    ("mediapartners-google", Some("Mediapartners-Google")),
    ("feedfetcher-google", Some("FeedFetcher-Google")),
    ("google-read-aloud", Some("Google-Read-Aloud")),
    ("bingbot", Some("bingbot")),
    ("bingpreview", Some("BingPreview")),
    ("applebot", Some("Applebot")),
    ("yandex", None),
    ("baiduspider", Some("Baiduspider")),
    ("duckduckbot", Some("DuckDuckBot")),
    ("petalbot", Some("PetalBot")),
    ("yeti/", Some("Yeti")),
    ("facebookexternalhit", Some("facebookexternalhit")),
    ("meta-externalagent", Some("meta-externalagent")),
    ("twitterbot", Some("Twitterbot")),
    ("slack-imgproxy", Some("Slack-ImgProxy")),
    ("slackbot", Some("Slackbot")),
    ("discordbot", Some("Discordbot")),
    ("telegrambot", Some("TelegramBot")),
    ("whatsapp/", Some("WhatsApp")),
    ("linkedinbot", Some("LinkedInBot")),
    ("gptbot", Some("GPTBot")),
    ("chatgpt-user", Some("ChatGPT-User")),
    ("oai-searchbot", Some("OAI-SearchBot")),
    ("claudebot", Some("ClaudeBot")),
    ("claude-user", Some("Claude-User")),
    ("perplexitybot", Some("PerplexityBot")),
    ("perplexity-user", Some("Perplexity-User")),
    ("bytespider", Some("Bytespider")),
    ("amazonbot", Some("Amazonbot")),
    ("ahrefsbot", Some("AhrefsBot")),
    ("semrushbot", Some("SemrushBot")),
    ("mj12bot", Some("MJ12bot")),
    ("dotbot", Some("DotBot")),
    ("feedly", Some("Feedly")),
    ("headlesschrome", Some("HeadlessChrome")),
    ("chrome-lighthouse", Some("Lighthouse")),
    ("phantomjs", Some("PhantomJS")),
    ("curl/", Some("curl")),
    ("wget/", Some("Wget")),
    ("python-requests", Some("python-requests")),
    ("python-httpx", Some("python-httpx")),
    ("python-urllib", Some("Python-urllib")),
    ("aiohttp/", Some("aiohttp")),
    ("go-http-client", Some("Go-http-client")),
    ("okhttp/", Some("okhttp")),
    ("axios/", Some("axios")),
    ("node-fetch", Some("node-fetch")),
    ("undici", Some("undici")),
    ("apache-httpclient", Some("Apache-HttpClient")),
    ("java/1.", Some("Java")),
    ("java-http-client", Some("Java")),
    ("libwww-perl", Some("libwww-perl")),
    ("scrapy", Some("Scrapy")),
    ("uptimerobot", Some("UptimeRobot")),
    ("pingdom", Some("Pingdom")),
    ("statuscake", Some("StatusCake")),
    // Generic words last: a crawler that names itself.
    ("crawler", None),
    ("spider", None),
    ("bot/", None),
    ("bot;", None),
    ("bot)", None),
    ("+http", None),
];

/// What one header says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Agent {
    /// [`DESKTOP`], [`MOBILE`], [`TABLET`], [`BOT`] or [`UNKNOWN`].
    pub device: &'static str,
    pub browser: String,
    pub os: String,
    /// The bot's name, when it is one.
    pub bot: Option<String>,
}

/// Classifies headers (the parser holds no per-call state).
#[derive(Default)]
pub struct AgentParser {
    woothee: Parser,
    lower: String,
}

impl std::fmt::Debug for AgentParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentParser")
    }
}

impl AgentParser {
    pub fn new() -> Self {
        AgentParser {
            woothee: Parser::new(),
            lower: String::new(),
        }
    }

    /// Classifies header `ua` into `out` (reusing its buffers).
    pub fn classify(&mut self, ua: &str, out: &mut Agent) {
        out.browser.clear();
        out.os.clear();
        out.bot = None;
        out.device = UNKNOWN;
        let ua = ua.trim();
        if ua.is_empty() || ua == "-" {
            out.browser.push_str(UNKNOWN);
            out.os.push_str(UNKNOWN);
            return;
        }
        let r = self.woothee.parse(ua);
        let (name, category, os) = r.as_ref().map_or(("UNKNOWN", "UNKNOWN", "UNKNOWN"), |r| {
            (r.name, r.category, r.os)
        });
        self.lower.clear();
        self.lower.push_str(ua);
        self.lower.make_ascii_lowercase();
        let marked = BOT_MARKS
            .iter()
            .find(|(m, _)| self.lower.contains(m))
            .map(|(m, n)| n.unwrap_or(m.trim_end_matches(['/', ';', ')'])));
        if matches!(category, "crawler" | "misc") || marked.is_some() {
            out.device = BOT;
            let name = match (category, marked) {
                ("crawler", _) | (_, None) if name != "UNKNOWN" => name,
                (_, Some(m)) => m,
                _ => "(other bot)",
            };
            out.bot = Some(name.to_string());
        }
        out.os.push_str(canonical_os(os));
        out.browser.push_str(in_app(ua).unwrap_or(match name {
            "UNKNOWN" => UNKNOWN,
            "Internet Explorer" => "IE",
            n => n,
        }));
        if out.bot.is_none() {
            out.device = match category {
                "pc" => DESKTOP,
                "smartphone" | "mobilephone" => match os {
                    "iPad" => TABLET,
                    "Android" if !ua.contains("Mobile") => TABLET,
                    _ => MOBILE,
                },
                _ => UNKNOWN,
            };
        }
    }
}

/// An in-app or vendor browser woothee reports as `Webview` or Chrome.
fn in_app(ua: &str) -> Option<&'static str> {
    [
        ("FBAN/", "Facebook"),
        ("FB_IAB/", "Facebook"),
        ("Instagram ", "Instagram"),
        ("SamsungBrowser/", "Samsung Internet"),
        ("UCBrowser/", "UC Browser"),
        ("Silk/", "Silk"),
        ("YaBrowser/", "Yandex Browser"),
        ("EdgA/", "Edge"),
        ("EdgiOS/", "Edge"),
        ("CriOS/", "Chrome"),
        ("FxiOS/", "Firefox"),
        ("OPR/", "Opera"),
    ]
    .iter()
    .find(|(m, _)| ua.contains(m))
    .map(|(_, n)| *n)
}

/// One name per operating system family.
fn canonical_os(os: &str) -> &str {
    match os {
        "UNKNOWN" => UNKNOWN,
        "Mac OSX" | "Mac OS X" => "macOS",
        "iPhone" | "iPad" | "iPod" | "iOS" => "iOS",
        "ChromeOS" | "Chrome OS" => "ChromeOS",
        o if o.starts_with("Windows Phone") => "Windows Phone",
        o if o.starts_with("Windows") => "Windows",
        o => o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every header of a labelled set of 219 real ones (desktop, mobile, tablet and in-app
    /// browsers, crawlers, previews, AI agents, HTTP libraries) classifies as labelled: device,
    /// OS and bot exactly; the browser too, but for the few woothee names differently (listed).
    #[test]
    fn the_labelled_set_classifies_as_labelled() {
        let set = include_str!("../../../tests/data/ua_set.tsv");
        let mut p = AgentParser::new();
        let mut a = Agent::default();
        let mut wrong = Vec::new();
        let mut rows = 0;
        for line in set.lines().skip(1) {
            let f: Vec<&str> = line.split('\t').collect();
            let [ua, device, browser, os, bot] = f[..] else {
                panic!("bad line {line:?}")
            };
            rows += 1;
            p.classify(ua, &mut a);
            let is_bot = bot == "1";
            if a.bot.is_some() != is_bot {
                wrong.push(format!("bot {is_bot}: {ua} -> {a:?}"));
                continue;
            }
            if is_bot {
                continue;
            }
            if a.device != device || a.os != os || a.browser != browser {
                wrong.push(format!("{device}/{browser}/{os}: {ua} -> {a:?}"));
            }
        }
        assert_eq!(rows, 219);
        assert!(
            wrong.is_empty(),
            "{} wrong:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
    }

    #[test]
    fn empty_and_absurd_headers() {
        let mut p = AgentParser::new();
        let mut a = Agent::default();
        p.classify("", &mut a);
        assert_eq!(
            (a.device, a.browser.as_str(), a.bot.as_deref()),
            (UNKNOWN, UNKNOWN, None)
        );
        p.classify(&"x".repeat(10_000), &mut a);
        assert_eq!(a.bot, None);
        p.classify("Mozilla/5.0 (Linux; Android 10; CUBOT_X30) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36", &mut a);
        assert_eq!((a.device, a.bot.as_deref()), (MOBILE, None));
    }
}
