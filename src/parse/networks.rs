//! Bot networks: a list of address ranges the user supplies (`[geo] bot_networks`), such as
//! the published ranges of cloud providers and hosting companies — where crawlers, scrapers
//! and headless browsers run, whatever User-Agent they send. A pageview from an address in the
//! list is a bot's, like one whose User-Agent is (`agent`): counted in the `bot` dimension under
//! the network's name and, by default (`agg.bots = "exclude"`), in no other metric.
//!
//! The file is text, one network per line: a CIDR (`192.0.2.0/24`, `2001:db8::/32`) or a single
//! address, then optionally a name for the `bot` dimension (the rest of the line, e.g.
//! `203.0.113.0/24 ExampleCloud`; without one, [`DEFAULT_NAME`]); `#` starts a comment. A line
//! that is none of these refuses the whole file, naming the line: a list half read would count
//! some of a provider's bots as readers. It is watched like the country database
//! (`watched`): replaced at run time, a bad version reported and the previous one kept.
//!
//! In memory the networks are disjoint ranges of IPv6 numbers (IPv4 mapped into `::ffff:0:0/96`)
//! sorted by start, each with the index of its name: a lookup is one binary search (a cloud
//! provider's list of a few thousand networks: about 12 steps), done only for pageviews whose
//! User-Agent is not a bot's already. Where two listed networks overlap, the narrower one's
//! name wins for its addresses.

use std::path::{Path, PathBuf};

use crate::parse::watched::{Load, Loaded, Shared, View, Watched};

/// The `bot` value of an address in an unnamed network.
pub const DEFAULT_NAME: &str = "datacenter";

/// The longest name kept (longer ones are cut at a character boundary).
const MAX_NAME: usize = 64;

/// Why a list could not be used.
#[derive(Debug, thiserror::Error)]
pub enum NetworksError {
    #[error("cannot read the bot networks file {}: {source}; set geo.bot_networks to a file of networks (README \"Bot networks\") or to \"\" to go without", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the bot networks file {}, line {line}: {text:?} is not a network ({reason}); write one CIDR (192.0.2.0/24, 2001:db8::/32) or address per line, optionally followed by a name; # starts a comment", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        text: String,
        reason: String,
    },
}

/// A list of networks as read from its file.
#[derive(Debug, Default)]
pub struct Networks {
    /// Disjoint `(first, last, name index)` ranges, sorted by `first`.
    ranges: Vec<(u128, u128, u16)>,
    names: Vec<Box<str>>,
    /// Networks listed (before overlapping ones were joined).
    listed: usize,
}

/// The bot networks of the process (see [`crate::parse::watched`]).
pub type NetworksFile = Watched<Networks>;
/// The configured list, if any: what an event configuration carries.
pub type BotNetworks = Shared<Networks>;

/// An IPv6 number of `ip` (an IPv4 one mapped), and the bits of its prefix in that space.
fn as_v6(net: &ipnet::IpNet) -> (u128, u32) {
    match net {
        ipnet::IpNet::V4(n) => (
            u128::from(n.network().to_ipv6_mapped()),
            96 + u32::from(n.prefix_len()),
        ),
        ipnet::IpNet::V6(n) => (u128::from(n.network()), u32::from(n.prefix_len())),
    }
}

impl Networks {
    /// Reads a list (`path` names it in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Networks, NetworksError> {
        let mut nets: Vec<(u128, u128, u32, &str)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let (net, name) = match line.split_once(char::is_whitespace) {
                Some((n, rest)) => (n, rest.trim()),
                None => (line, ""),
            };
            let parsed = net.parse::<ipnet::IpNet>().or_else(|e| {
                net.parse::<std::net::IpAddr>()
                    .map(ipnet::IpNet::from)
                    .map_err(|_| e)
            });
            let net = parsed.map_err(|e| NetworksError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                text: raw.chars().take(200).collect(),
                reason: e.to_string(),
            })?;
            let (first, prefix) = as_v6(&net.trunc());
            let last = first | u128::MAX.checked_shr(prefix).unwrap_or(0);
            nets.push((first, last, prefix, name));
        }
        let listed = nets.len();
        let mut names: Vec<Box<str>> = Vec::new();
        let mut named = Vec::with_capacity(nets.len());
        for (first, last, prefix, name) in nets {
            let name = if name.is_empty() { DEFAULT_NAME } else { name };
            let end = name
                .char_indices()
                .map(|(i, c)| i + c.len_utf8())
                .take_while(|&e| e <= MAX_NAME)
                .last()
                .unwrap_or(0);
            let name = &name[..end];
            let id = match names.iter().position(|n| **n == *name) {
                Some(i) => i,
                None => {
                    names.push(name.into());
                    names.len() - 1
                }
            };
            named.push((first, last, prefix, u16::try_from(id).unwrap_or(u16::MAX)));
        }
        Ok(Networks {
            ranges: disjoint(named),
            names,
            listed,
        })
    }

    /// The name of the network holding the address `key` (as [`crate::parse::geo::client_addr`]
    /// gives it), if one does.
    pub fn find(&self, key: u128) -> Option<&str> {
        let i = self.ranges.partition_point(|r| r.0 <= key);
        let &(_, last, id) = self.ranges.get(i.checked_sub(1)?)?;
        (key <= last)
            .then(|| self.names.get(usize::from(id)).map(|n| &**n))
            .flatten()
    }

    /// Networks listed in the file.
    pub fn listed(&self) -> usize {
        self.listed
    }
}

/// Networks `(first, last, prefix, name)` as disjoint ranges sorted by start, where each
/// address has the name of the narrowest network holding it (of equal ones, the last listed).
/// Two prefixes are either nested or disjoint, so one sweep over them sorted by start (wider
/// first) with a stack of the networks open at that point does it.
fn disjoint(mut nets: Vec<(u128, u128, u32, u16)>) -> Vec<(u128, u128, u16)> {
    nets.sort_by_key(|n| (n.0, n.2));
    let mut out: Vec<(u128, u128, u16)> = Vec::with_capacity(nets.len());
    // The first address not covered by `out` yet (None: past the end of the space).
    let mut next: Option<u128> = Some(0);
    let mut open: Vec<(u128, u16)> = Vec::new();
    // Ends the innermost open network: what is left of it up to its end.
    let close = |open: &mut Vec<(u128, u16)>, out: &mut Vec<_>, next: &mut Option<u128>| {
        if let Some((last, id)) = open.pop() {
            if let Some(n) = next.filter(|&n| n <= last) {
                out.push((n, last, id));
                *next = last.checked_add(1);
            }
        }
    };
    for (first, last, _, id) in nets {
        while open.last().is_some_and(|&(l, _)| l < first) {
            close(&mut open, &mut out, &mut next);
        }
        if let (Some(&(_, outer)), Some(n)) = (open.last(), next) {
            if n < first {
                out.push((n, first - 1, outer));
            }
        }
        // Everything before `first` is in `out` now (closed networks end below it).
        next = Some(first);
        open.push((last, id));
    }
    while !open.is_empty() {
        close(&mut open, &mut out, &mut next);
    }
    out
}

impl Load for Networks {
    type Error = NetworksError;
    const WITHOUT: &'static str = "no address counts as a bot's";

    fn load(
        path: &Path,
        read: std::io::Result<Vec<u8>>,
    ) -> Result<Loaded<Networks>, NetworksError> {
        let bytes = read.map_err(|source| NetworksError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        let nets = Networks::parse(path, &text)?;
        let modified = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Ok(Loaded {
            kind: format!("{} networks", nets.listed),
            build_epoch: modified,
            value: nets,
        })
    }
}

/// One parser's access to the list.
#[derive(Debug, Default)]
pub struct NetworksView(View<Networks>);

impl NetworksView {
    pub fn new(n: &BotNetworks) -> NetworksView {
        NetworksView(View::new(n))
    }

    /// Whether a list is configured (read or not).
    pub fn configured(&self) -> bool {
        self.0.configured()
    }

    /// The name of the listed network holding address `key`, if any.
    pub fn find(&mut self, key: u128) -> Option<&str> {
        self.0.get().0?.find(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: &str) -> u128 {
        crate::parse::geo::client_addr(a).expect("address").1
    }

    fn list(text: &str) -> Networks {
        Networks::parse(Path::new("nets.txt"), text).expect("list")
    }

    #[test]
    fn addresses_in_listed_networks_have_their_names() {
        let n = list(
            "# cloud ranges\n\
             192.0.2.0/24 ExampleCloud\n\
             \n\
             198.51.100.7   # one address, unnamed\n\
             2001:db8::/32 Example Hosting  \n\
             10.0.0.0/8 Wide\n\
             10.1.2.0/24 Narrow\n\
             203.0.113.5/24\n",
        );
        assert_eq!(n.listed(), 6);
        assert_eq!(n.find(key("192.0.2.0")), Some("ExampleCloud"));
        assert_eq!(n.find(key("192.0.2.255")), Some("ExampleCloud"));
        assert_eq!(n.find(key("192.0.3.0")), None);
        assert_eq!(n.find(key("192.0.1.255")), None);
        assert_eq!(n.find(key("198.51.100.7")), Some(DEFAULT_NAME));
        assert_eq!(n.find(key("198.51.100.8")), None);
        assert_eq!(n.find(key("2001:db8:ffff::1")), Some("Example Hosting"));
        assert_eq!(n.find(key("2001:db9::1")), None);
        // The narrower network names its addresses, the wider one the rest.
        assert_eq!(n.find(key("10.1.2.3")), Some("Narrow"));
        assert_eq!(n.find(key("10.1.1.3")), Some("Wide"));
        assert_eq!(n.find(key("10.1.3.0")), Some("Wide"));
        assert_eq!(n.find(key("10.255.255.255")), Some("Wide"));
        // Host bits are ignored, as routers do.
        assert_eq!(n.find(key("203.0.113.200")), Some(DEFAULT_NAME));
        // An IPv4 address is not in an IPv6 network that is not the mapped one.
        assert_eq!(n.find(key("::ffff:192.0.2.9")), Some("ExampleCloud"));
        assert_eq!(n.find(key("::1")), None);
        // The ranges are disjoint and sorted.
        assert!(
            n.ranges.windows(2).all(|w| w[0].1 < w[1].0),
            "{:?}",
            n.ranges
        );
    }

    #[test]
    fn the_whole_address_space_and_empty_lists() {
        let n = list("::/0 everything\n");
        assert_eq!(n.find(0), Some("everything"));
        assert_eq!(n.find(u128::MAX), Some("everything"));
        let n = list("0.0.0.0/0\n");
        assert_eq!(n.find(key("255.255.255.255")), Some(DEFAULT_NAME));
        assert_eq!(n.find(key("2001:db8::1")), None);
        let n = list("# nothing yet\n\n");
        assert_eq!((n.listed(), n.find(key("192.0.2.1"))), (0, None));
    }

    #[test]
    fn a_bad_line_refuses_the_file_and_names_the_line() {
        for (text, line) in [
            ("192.0.2.0/24\n192.0.2.0/33\n", 2),
            ("not-an-address\n", 1),
            ("# ok\n\n2001:db8::/32 x\n300.1.2.3\n", 4),
        ] {
            match Networks::parse(Path::new("/etc/nets.txt"), text) {
                Err(e @ NetworksError::Line { .. }) => {
                    let m = e.to_string();
                    assert!(
                        m.contains(&format!("line {line}")) && m.contains("/etc/nets.txt"),
                        "{m}"
                    );
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_file_is_watched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nets.txt");
        let w = NetworksFile::open(&path);
        assert!(
            w.describe().contains("geo.bot_networks"),
            "{}",
            w.describe()
        );
        let mut v = NetworksView::new(&BotNetworks::new(w.clone()));
        assert!(v.configured());
        assert_eq!(v.find(key("192.0.2.1")), None);
        std::fs::write(&path, "192.0.2.0/24 A\n").expect("write");
        assert!(matches!(w.reload_if_changed(), Some(Ok(()))));
        assert_eq!(v.find(key("192.0.2.1")), Some("A"));
        assert_eq!(w.status().loaded.as_deref(), Some("1 networks"));
        // A bad version is refused; the one before stays in use.
        std::fs::write(&path, "192.0.2.0/24 B\nbad line\n").expect("write");
        assert!(matches!(w.reload_if_changed(), Some(Err(_))));
        assert_eq!(v.find(key("192.0.2.1")), Some("A"));
        let st = w.status();
        assert_eq!((st.loads, st.failures), (1, 2));
        assert!(w.describe().contains("stays in use"), "{}", w.describe());
        std::fs::write(&path, "2001:db8::/32\n").expect("write");
        assert!(matches!(w.reload_if_changed(), Some(Ok(()))));
        assert_eq!(v.find(key("192.0.2.1")), None);
        assert_eq!(v.find(key("2001:db8::5")), Some(DEFAULT_NAME));
        assert!(!NetworksView::new(&BotNetworks::none()).configured());
    }
}
