//! Which keys of a line hold which field: the configured alternatives ([`FieldNames`],
//! `[agg.event]` in the config) and the table both readers look keys up in ([`KeyTable`]), by
//! length then bytes, so that a key costs one slice comparison or none.

/// Field names looked up in a JSON line (and in the query string of a combined line), each a
/// list of alternatives tried in order: when several are present, the earlier one in the list
/// wins, wherever it stands in the line. An empty string or `null` counts as absent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldNames {
    /// Event time as epoch seconds with milliseconds (nginx `$msec`), a number or a string.
    /// Wins over `time`.
    pub msec: Vec<String>,
    /// Event time as RFC 3339 (nginx `$time_iso8601`), with or without a fraction.
    pub time: Vec<String>,
    /// The page url, percent-encoded (`$arg_url`) or not.
    pub url: Vec<String>,
    /// The page's referrer, percent-encoded (`$arg_ref`) or not (a `Referer` header).
    pub referrer: Vec<String>,
    /// The visitor id, kept as sent.
    pub vid: Vec<String>,
    /// `pageview`/`pv` or `heartbeat`/`hb`, any case; absent means pageview.
    pub action: Vec<String>,
    /// Seconds of engagement a heartbeat stands for, an integer 0..=3600.
    pub inc: Vec<String>,
    /// The User-Agent header (nginx `$http_user_agent`): device, browser, OS, bot.
    pub ua: Vec<String>,
    /// The client address (nginx `$remote_addr`; an `X-Forwarded-For` list counts by its first
    /// entry): the country, when `[geo]` names a database. Never stored in the aggregates.
    pub ip: Vec<String>,
    /// A custom event's name (the tracking script's `n`): its value of the `event` dimension.
    pub name: Vec<String>,
    /// A custom event's props (the tracking script's `p`): a JSON object, as an object or as
    /// its text (percent-encoded or not), read by custom dimensions whose field is
    /// `props.KEY`.
    pub props: Vec<String>,
}

/// A custom dimension whose field starts with this reads the key after it from the line's
/// props (`FieldNames::props`), not from the line.
pub const PROPS_PREFIX: &str = "props.";

impl Default for FieldNames {
    fn default() -> Self {
        fn names(list: &[&str]) -> Vec<String> {
            list.iter().map(|s| (*s).to_owned()).collect()
        }
        FieldNames {
            msec: names(&["msec"]),
            time: names(&["ts", "time_iso8601"]),
            url: names(&["url"]),
            referrer: names(&["urlref", "ref"]),
            vid: names(&["vid"]),
            action: names(&["action", "a"]),
            inc: names(&["inc"]),
            ua: names(&["ua", "user_agent", "http_user_agent"]),
            ip: names(&["ip", "remote_addr"]),
            name: names(&["name", "n"]),
            props: names(&["props", "p"]),
        }
    }
}

/// Which event field a key stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Msec,
    Time,
    Url,
    Referrer,
    Vid,
    Action,
    Inc,
    Ua,
    Ip,
    Name,
    Props,
    /// A custom dimension's field (its position in `EventConfig::custom`).
    Custom(u8),
}

impl FieldNames {
    /// The field `key` names and the position of that name among the field's alternatives:
    /// the first field in declaration order that lists it. [`KeyTable`] answers the same
    /// faster; this is the definition it is tested against.
    #[cfg(test)]
    pub(super) fn lookup(&self, key: &str) -> Option<(Field, usize)> {
        self.fields()
            .into_iter()
            .find_map(|(field, names)| Some((field, names.iter().position(|n| n == key)?)))
    }

    /// Every field with its names, in the order that decides which field a name shared by
    /// two fields stands for.
    pub(super) fn fields(&self) -> [(Field, &Vec<String>); 11] {
        [
            (Field::Msec, &self.msec),
            (Field::Time, &self.time),
            (Field::Url, &self.url),
            (Field::Referrer, &self.referrer),
            (Field::Vid, &self.vid),
            (Field::Action, &self.action),
            (Field::Inc, &self.inc),
            (Field::Ua, &self.ua),
            (Field::Ip, &self.ip),
            (Field::Name, &self.name),
            (Field::Props, &self.props),
        ]
    }
}

/// A configured name, the field it stands for and its alternative number.
pub(super) type KeyEntry = (Box<[u8]>, Field, usize);

/// The configured field names arranged for matching a key: grouped by length, so that a key
/// is compared with the one or two names of its length instead of with every name (keys are
/// matched ~8 times per event; the linear search over all names showed in profiles).
#[derive(Debug, Clone, Default)]
pub(super) struct KeyTable {
    /// `by_len[n]`: the names of `n` bytes, with their field and alternative number.
    pub(super) by_len: Vec<Vec<KeyEntry>>,
}

impl KeyTable {
    /// The table of `names` and of the custom dimensions' fields (which never shadow a
    /// built-in name: the configuration refuses that).
    pub(super) fn with_custom(names: &FieldNames, custom: &[(String, String)]) -> Self {
        let mut t = KeyTable::new(names);
        for (i, (_, field)) in custom.iter().enumerate() {
            // A prop is read from the props, after the line.
            if field.starts_with(PROPS_PREFIX) {
                continue;
            }
            if let Ok(i) = u8::try_from(i) {
                t.insert(field, Field::Custom(i), 0);
            }
        }
        t
    }

    pub(super) fn new(names: &FieldNames) -> Self {
        let mut t = KeyTable::default();
        for (field, list) in names.fields() {
            for (alt, name) in list.iter().enumerate() {
                t.insert(name, field, alt);
            }
        }
        t
    }

    /// Adds `name` for `field` (alternative `alt`) unless a name already holds it: the first
    /// field (and the first position in it) that lists a name wins; later mentions of the
    /// same name are never looked at.
    fn insert(&mut self, name: &str, field: Field, alt: usize) {
        let n = name.len();
        if self.by_len.len() <= n {
            self.by_len.resize(n + 1, Vec::new());
        }
        if let Some(bucket) = self.by_len.get_mut(n) {
            if !bucket.iter().any(|(k, _, _)| **k == *name.as_bytes()) {
                bucket.push((name.as_bytes().into(), field, alt));
            }
        }
    }

    /// The field `key` names and the position of that name among the field's alternatives.
    pub(super) fn lookup(&self, key: &[u8]) -> Option<(Field, usize)> {
        self.by_len
            .get(key.len())?
            .iter()
            // A byte loop, not `==`: for these few-byte keys the call to memcmp cost more
            // than the comparison.
            .find(|(k, _, _)| k.iter().zip(key).all(|(a, b)| a == b))
            .map(|&(_, field, alt)| (field, alt))
    }
}
