//! TEMPORARY SHIM (replaced by the real parser).
#![allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct FieldNames {
    pub msec: Vec<String>,
    pub time: Vec<String>,
    pub url: Vec<String>,
    pub referrer: Vec<String>,
    pub vid: Vec<String>,
    pub action: Vec<String>,
    pub inc: Vec<String>,
}
impl Default for FieldNames {
    fn default() -> Self {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect();
        FieldNames {
            msec: v(&["msec"]),
            time: v(&["ts", "time_iso8601"]),
            url: v(&["url"]),
            referrer: v(&["urlref", "ref"]),
            vid: v(&["vid"]),
            action: v(&["action", "a"]),
            inc: v(&["inc"]),
        }
    }
}
#[derive(Debug, Clone)]
pub struct EventConfig {
    pub fields: FieldNames,
    pub heartbeat_seconds: u32,
    pub url_keep_query: Vec<String>,
}
impl Default for EventConfig {
    fn default() -> Self {
        EventConfig {
            fields: FieldNames::default(),
            heartbeat_seconds: 10,
            url_keep_query: vec![],
        }
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pageview,
    Heartbeat,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    pub ts_ms: Option<i64>,
    pub bad_timestamp: bool,
    pub action: Action,
    pub engaged_seconds: u32,
    pub site: &'a str,
    pub url: &'a str,
    pub ref_domain: &'a str,
    pub vid: &'a str,
    pub invalid_utf8: bool,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum EventError {
    #[error("not an event")]
    NotAnEvent,
    #[error("no url")]
    NoUrl,
    #[error("bad url")]
    BadUrl,
    #[error("unknown action")]
    UnknownAction,
}
impl EventError {
    pub const ALL: [EventError; 4] = [
        EventError::NotAnEvent,
        EventError::NoUrl,
        EventError::BadUrl,
        EventError::UnknownAction,
    ];
    pub fn kind(self) -> &'static str {
        match self {
            EventError::NotAnEvent => "not_an_event",
            EventError::NoUrl => "no_url",
            EventError::BadUrl => "bad_url",
            EventError::UnknownAction => "unknown_action",
        }
    }
}
pub struct EventParser {
    cfg: EventConfig,
    url: String,
    site: String,
    refd: String,
    vid: String,
}
fn dec(s: &str) -> String {
    if s.contains("://") {
        s.to_string()
    } else {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    }
}
fn host(u: &str) -> Option<String> {
    let r = u.split_once("://")?.1;
    let h = r.split(['/', '?', '#']).next()?;
    let h = h.rsplit('@').next()?;
    let h = h.split(':').next()?;
    if h.is_empty() {
        None
    } else {
        Some(h.to_ascii_lowercase())
    }
}
impl EventParser {
    pub fn new(cfg: EventConfig) -> Self {
        EventParser {
            cfg,
            url: String::new(),
            site: String::new(),
            refd: String::new(),
            vid: String::new(),
        }
    }
    pub fn parse(&mut self, record: &[u8]) -> Result<Event<'_>, EventError> {
        let msg = crate::parse::syslog::parse(record)
            .map(|s| s.msg)
            .unwrap_or(record);
        let v: serde_json::Value =
            serde_json::from_slice(msg).map_err(|_| EventError::NotAnEvent)?;
        let url = dec(v
            .get("url")
            .and_then(|x| x.as_str())
            .ok_or(EventError::NoUrl)?);
        let url = url
            .split('#')
            .next()
            .unwrap_or("")
            .split('?')
            .next()
            .unwrap_or("")
            .to_string();
        self.site = host(&url).ok_or(EventError::BadUrl)?;
        self.url = url;
        let r = dec(v
            .get("urlref")
            .or(v.get("ref"))
            .and_then(|x| x.as_str())
            .unwrap_or(""));
        self.refd = if r.is_empty() || r == "-" {
            "(direct)".into()
        } else {
            host(&r).unwrap_or("(invalid)".into())
        };
        self.vid = v
            .get("vid")
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_string();
        let action = match v.get("action").and_then(|x| x.as_str()).unwrap_or("") {
            "" | "pv" | "pageview" => Action::Pageview,
            "hb" | "heartbeat" => Action::Heartbeat,
            _ => return Err(EventError::UnknownAction),
        };
        let ts_ms = v
            .get("msec")
            .and_then(|x| x.as_f64())
            .map(|f| (f * 1000.0).round() as i64);
        let engaged = if action == Action::Heartbeat {
            v.get("inc")
                .and_then(|x| x.as_u64())
                .map_or(self.cfg.heartbeat_seconds, |x| x as u32)
        } else {
            0
        };
        Ok(Event {
            ts_ms,
            bad_timestamp: false,
            action,
            engaged_seconds: engaged,
            site: &self.site,
            url: &self.url,
            ref_domain: &self.refd,
            vid: &self.vid,
            invalid_utf8: false,
        })
    }
}
