//! The `country` of a pageview, and its `region` when the database has one, from its client
//! address and a MaxMind-format database the user supplies (`[geo] database`, e.g.
//! GeoLite2-Country or DB-IP's Country Lite; a city database such as GeoLite2-City adds regions).
//!
//! One [`GeoDb`] per process holds the loaded database and watches its file: [`GeoDb::reload_if_changed`]
//! (called by a background thread every `geo.reload_interval`) reads the file again when its
//! size, time or inode changed, checks its metadata and that its first records hold
//! countries, and only then swaps it in;
//! a missing or damaged file is reported (log and `/metrics`) and the previous database, or
//! none, stays in use — ingest never stops for it. Each parser holds a [`GeoView`]: its own
//! reference to the current database, refreshed when the shared generation number moves (one
//! relaxed atomic load per lookup, no lock on the hot path), a cache from the database's
//! record offset to the country, so a record is decoded once per shard, not once per hit, and
//! a direct-mapped cache of its last 4 096 addresses, so a reader's next pageview skips the
//! tree. The address is used for the lookup and kept only there: only the country and region
//! codes reach the aggregates.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use maxminddb::{PathElement, Reader};

use crate::parse::watched::{Load, Loaded, Shared, Status, View, Watched};

/// The country of a pageview whose address is missing, unparseable, or not in the database,
/// and of every pageview while no database is loaded.
pub const UNKNOWN: &str = "(unknown)";

/// Why a database could not be used.
#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot read the geo database {}: {source}; set geo.database to a MaxMind-format country database (e.g. GeoLite2-Country.mmdb, see README \"Countries\") or to \"\" to go without countries", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the geo database {} is not a valid MaxMind DB file ({source}); replace it with a complete copy (write a new file and rename it over the old one)", path.display())]
    Invalid {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
    #[error("the geo database {} ({kind}) holds no country in its first {records} records; geo.database must name a country (or city) database such as GeoLite2-Country.mmdb", path.display())]
    NoCountries {
        path: PathBuf,
        kind: String,
        records: usize,
    },
}

/// Records of a new database looked at for a country code before it is used.
const SAMPLE: usize = 100;

/// The country code of a record: GeoIP2/GeoLite2 and DB-IP write `country.iso_code`, else
/// (an anycast or continent-level network) `registered_country.iso_code`; ip-location-db and
/// IPinfo write `country_code`.
fn country_code<'a, S: AsRef<[u8]>>(found: &maxminddb::LookupResult<'a, S>) -> Option<&'a str> {
    [
        &[PathElement::Key("country"), PathElement::Key("iso_code")][..],
        &[
            PathElement::Key("registered_country"),
            PathElement::Key("iso_code"),
        ],
        &[PathElement::Key("country_code")],
    ]
    .iter()
    .find_map(|path| found.decode_path::<&str>(path).ok().flatten())
    .filter(|c| !c.is_empty() && c.len() <= 8)
}

/// The longest region kept (a code is 4 to 6 bytes; a name longer than this is not one).
const REGION_BYTES: usize = 64;

/// The region of a record in country `country`, as an ISO 3166-2 code `CC-SUB`: GeoIP2,
/// GeoLite2-City and DB-IP's city databases write the largest subdivision first, as
/// `subdivisions[0].iso_code`; a subdivision with a name only (`subdivisions[0].names.en`,
/// ip-location-db's `state1`) gives `CC-Name`. None for a country database.
fn region_code<S: AsRef<[u8]>>(
    found: &maxminddb::LookupResult<'_, S>,
    country: &str,
) -> Option<String> {
    use PathElement::{Index, Key};
    let sub = [
        &[Key("subdivisions"), Index(0), Key("iso_code")][..],
        &[Key("subdivisions"), Index(0), Key("names"), Key("en")],
        &[Key("state1")],
    ]
    .iter()
    .find_map(|path| found.decode_path::<&str>(path).ok().flatten())
    .map(str::trim)
    .filter(|s| !s.is_empty() && s.len() <= REGION_BYTES)?;
    Some(format!("{country}-{sub}"))
}

/// A country database as read from its file.
pub struct Countries(Reader<Vec<u8>>);

/// The country database of the process (see [`crate::parse::watched`]).
pub type GeoDb = Watched<Countries>;
/// The configured country database, if any: what an event configuration carries.
pub type Geo = Shared<Countries>;
/// What `/metrics` and `pixeld validate` say about the database.
pub type GeoStatus = Status;

impl Load for Countries {
    type Error = GeoError;
    const WITHOUT: &'static str = "countries are (unknown)";

    fn load(path: &Path, read: std::io::Result<Vec<u8>>) -> Result<Loaded<Countries>, GeoError> {
        let bytes = read.map_err(|source| GeoError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |source| GeoError::Invalid {
            path: path.to_path_buf(),
            source,
        };
        // The metadata and the tree's layout are checked here (a file cut short has no
        // metadata at its end). `Reader::verify` is not used: it refuses databases every
        // reader serves (ip-location-db's, without a description).
        let reader = Reader::from_source(bytes).map_err(invalid)?;
        // A database of something else (ASNs, say) would load and give no country: its first
        // records must hold one.
        // A city database's records hold regions too: said in what is loaded (the log, `pixeld
        // validate`), since without them the `region` dimension stays (unknown).
        let (mut records, mut countries, mut regions) = (0, false, false);
        for found in reader
            .networks(maxminddb::WithinOptions::default())
            .map_err(invalid)?
            .take(SAMPLE)
        {
            records += 1;
            let Ok(found) = found else { continue };
            if let Some(code) = country_code(&found) {
                countries = true;
                regions |= region_code(&found, code).is_some();
                if regions {
                    break;
                }
            }
        }
        let kind = reader.metadata().database_type.clone();
        if !countries {
            return Err(GeoError::NoCountries {
                path: path.to_path_buf(),
                kind,
                records,
            });
        }
        let build_epoch = reader.metadata().build_epoch;
        Ok(Loaded {
            value: Countries(reader),
            kind: if regions {
                format!("{kind} (countries and regions)")
            } else {
                kind
            },
            build_epoch,
        })
    }
}

/// Distinct places (country and region) a view names (a country database has about 250
/// countries, ISO 3166-2 about 5 000 regions; the cap only bounds a strange database).
const MAX_NAMES: usize = 16_384;

/// A country code and, from a city database, the code of a region in it.
#[derive(Debug)]
struct Place {
    country: Box<str>,
    region: Option<Box<str>>,
}

/// The country and region of a place in `names` (index `i`): [`UNKNOWN`] and none when it is
/// in no record.
fn place_of(names: &[Place], i: u16) -> (&str, Option<&str>) {
    names
        .get(usize::from(i))
        .map_or((UNKNOWN, None), |p| (&p.country, p.region.as_deref()))
}

/// The client of an address field (an address, or an `X-Forwarded-For`-style list whose first
/// entry is the client): the address, and it as an IPv6 number (an IPv4 one mapped).
pub fn client_addr(field: &str) -> Option<(IpAddr, u128)> {
    let first = field.split(',').next().unwrap_or_default().trim();
    let ip = first.parse::<IpAddr>().ok()?;
    let key = match ip {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    };
    Some((ip, key))
}

/// One parser's access to the database.
#[derive(Debug, Default)]
pub struct GeoView {
    db: View<Countries>,
    /// Record offset → index in `names`.
    by_offset: HashMap<usize, u16>,
    names: Vec<Place>,
    /// `country` U+001F `region` (or the country alone) → index in `names`: a record new to
    /// the view finds its place without a pass over thousands of regions.
    by_place: HashMap<String, u16>,
    /// Recent addresses (as IPv6, an IPv4 one mapped) → index in `names` ([`NOWHERE`]: in no
    /// record), direct-mapped: a reader's second pageview skips the walk down the tree.
    by_addr: Vec<(u128, u16)>,
}

/// Slots of a view's address cache (96 KiB: it stays in the core's L2 cache).
const ADDR_SLOTS: usize = 4096;
/// An empty slot's key (the all-ones IPv6 address, never looked up through the cache).
const EMPTY: u128 = u128::MAX;
/// The index of an address in no record of the database.
const NOWHERE: u16 = u16::MAX;

impl GeoView {
    pub fn new(geo: &Geo) -> GeoView {
        GeoView {
            db: View::new(geo),
            ..GeoView::default()
        }
    }

    /// Whether a database is configured (loaded or not): without one no address is read.
    pub fn configured(&self) -> bool {
        self.db.configured()
    }

    /// The ISO 3166 code of the country of `addr` (an address, or an `X-Forwarded-For`-style
    /// list whose first entry is the client), or [`UNKNOWN`].
    pub fn country(&mut self, addr: &str) -> &str {
        self.country_at(client_addr(addr))
    }

    /// The ISO 3166 code of the country of an address as [`client_addr`] gives it, or
    /// [`UNKNOWN`].
    pub fn country_at(&mut self, addr: Option<(IpAddr, u128)>) -> &str {
        self.place_at(addr).0
    }

    /// The ISO 3166-2 code of the region of `addr` (as [`GeoView::country`] takes it), if the
    /// database has one.
    pub fn region(&mut self, addr: &str) -> Option<&str> {
        self.place_at(client_addr(addr)).1
    }

    /// The country of an address as [`client_addr`] gives it ([`UNKNOWN`] when the database
    /// has none), and its region when the database has one.
    pub fn place_at(&mut self, addr: Option<(IpAddr, u128)>) -> (&str, Option<&str>) {
        let (Some(Countries(reader)), changed) = self.db.get() else {
            return (UNKNOWN, None);
        };
        if changed {
            self.by_offset.clear();
            self.names.clear();
            self.by_place.clear();
            self.by_addr.clear();
            self.by_addr.resize(ADDR_SLOTS, (EMPTY, NOWHERE));
        }
        let Some((ip, key)) = addr else {
            return (UNKNOWN, None);
        };
        let mixed = ((key as u64) ^ ((key >> 64) as u64)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot = (mixed >> (64 - ADDR_SLOTS.trailing_zeros())) as usize;
        if let Some(&(k, i)) = self.by_addr.get(slot) {
            if k == key && key != EMPTY {
                return place_of(&self.names, i);
            }
        }
        let i = Self::lookup(
            reader,
            ip,
            &mut self.by_offset,
            (&mut self.names, &mut self.by_place),
        );
        if let Some(s) = self.by_addr.get_mut(slot) {
            *s = (key, i);
        }
        place_of(&self.names, i)
    }

    /// The index in `names` of the place of `ip` ([`NOWHERE`] when it has none), a record
    /// decoded once per offset.
    fn lookup(
        reader: &Reader<Vec<u8>>,
        ip: IpAddr,
        by_offset: &mut HashMap<usize, u16>,
        (names, by_place): (&mut Vec<Place>, &mut HashMap<String, u16>),
    ) -> u16 {
        let Some(found) = reader.lookup(ip).ok() else {
            return NOWHERE;
        };
        let Some(offset) = found.offset() else {
            return NOWHERE;
        };
        match by_offset.get(&offset) {
            Some(&i) => i,
            None => {
                let (code, region) = match country_code(&found) {
                    Some(code) => (code, region_code(&found, code)),
                    None => (UNKNOWN, None),
                };
                let place = match &region {
                    Some(r) => format!("{code}\u{1f}{r}"),
                    None => code.to_string(),
                };
                let i = match by_place.get(&place) {
                    Some(&i) => i,
                    None if names.len() < MAX_NAMES => {
                        names.push(Place {
                            country: code.into(),
                            region: region.map(String::into_boxed_str),
                        });
                        // Below MAX_NAMES, so it fits.
                        let i = u16::try_from(names.len() - 1).unwrap_or(NOWHERE);
                        by_place.insert(place, i);
                        i
                    }
                    None => return NOWHERE,
                };
                by_offset.insert(offset, i);
                i
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a country database mapping each network to its code (as GeoLite2 does:
    /// `{"country": {"iso_code": …}}`); a code starting with `reg:` is written as
    /// `registered_country` only, one starting with `cc:` as ip-location-db's `country_code`;
    /// `DE/BY` adds a region as GeoLite2-City does (`subdivisions[0].iso_code`), `cc:US/Ohio`
    /// as ip-location-db's city databases do (`state1`).
    pub(crate) fn write_db(path: &Path, nets: &[(&str, &str)]) {
        let mut w = mmdb_writer::Writer::builder("Test-Country")
            .description(&[("en", "pixeld's unit tests")])
            .build();
        for (net, code) in nets {
            let net: ipnet::IpNet = net.parse().expect("test network");
            let v = match code.split_once(':') {
                Some(("reg", code)) => {
                    serde_json::json!({"registered_country": {"iso_code": code}})
                }
                Some(("cc", code)) => match code.split_once('/') {
                    Some((code, state)) => {
                        serde_json::json!({ "country_code": code, "state1": state })
                    }
                    None => serde_json::json!({ "country_code": code }),
                },
                _ => match code.split_once('/') {
                    Some((code, sub)) => serde_json::json!({
                        "country": {"iso_code": code},
                        "subdivisions": [{"iso_code": sub, "names": {"en": "-"}}, {"iso_code": "X"}],
                    }),
                    None => serde_json::json!({"country": {"iso_code": code}}),
                },
            };
            w.insert(net, &v).expect("insert");
        }
        let bytes = w.to_bytes().expect("mmdb bytes");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes).expect("write mmdb");
        std::fs::rename(&tmp, path).expect("rename mmdb");
    }

    #[test]
    fn countries_come_from_the_database_and_follow_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.mmdb");
        let db = GeoDb::open(&path);
        let st = db.status();
        assert!(st.loaded.is_none() && st.failures == 1, "{st:?}");
        assert!(st
            .error
            .as_deref()
            .is_some_and(|e| e.contains("geo.database")));
        let mut v = GeoView::new(&Geo::new(db.clone()));
        assert_eq!(v.country("192.0.2.1"), UNKNOWN);

        write_db(
            &path,
            &[
                ("192.0.2.0/24", "DE"),
                ("198.51.100.0/24", "reg:AT"),
                ("2001:db8::/32", "FR"),
                ("100.64.0.0/10", "cc:NL"),
            ],
        );
        assert!(matches!(db.reload_if_changed(), Some(Ok(()))));
        assert!(
            db.reload_if_changed().is_none(),
            "unchanged file, no reload"
        );
        assert_eq!(v.country("192.0.2.77"), "DE");
        assert_eq!(v.country(" 192.0.2.5, 10.0.0.1"), "DE");
        assert_eq!(v.country("198.51.100.9"), "AT");
        assert_eq!(v.country("2001:db8::1"), "FR");
        assert_eq!(v.country("100.64.3.4"), "NL");
        assert_eq!(v.country("203.0.113.1"), UNKNOWN);
        assert_eq!(v.country("not an address"), UNKNOWN);
        assert_eq!(v.country(""), UNKNOWN);

        // A damaged replacement is refused; the loaded database stays in use.
        std::fs::write(&path, b"garbage, not a database").expect("write");
        assert!(matches!(
            db.reload_if_changed(),
            Some(Err(GeoError::Invalid { .. }))
        ));
        assert_eq!(v.country("192.0.2.77"), "DE");
        let st = db.status();
        assert_eq!((st.loads, st.failures), (1, 2));
        assert!(st
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not a valid MaxMind DB")));
        assert!(st.error.is_some());

        // So is a database of something else.
        let mut w = mmdb_writer::Writer::builder("Test-ASN")
            .description(&[("en", "not countries")])
            .build();
        w.insert(
            "192.0.2.0/24".parse::<ipnet::IpNet>().expect("net"),
            &serde_json::json!({"autonomous_system_number": 64496}),
        )
        .expect("insert");
        std::fs::write(&path, w.to_bytes().expect("bytes")).expect("write");
        let r = db.reload_if_changed();
        assert!(
            matches!(r, Some(Err(GeoError::NoCountries { records: 1, .. }))),
            "{r:?}"
        );
        assert_eq!(v.country("192.0.2.77"), "DE");

        // A good one replaces it at once.
        write_db(&path, &[("192.0.2.0/24", "CH")]);
        assert!(matches!(db.reload_if_changed(), Some(Ok(()))));
        assert_eq!(v.country("192.0.2.77"), "CH");
        assert_eq!(v.country("2001:db8::1"), UNKNOWN);
        assert_eq!(db.status().error, None);
        assert_eq!(db.status().loaded.as_deref(), Some("Test-Country"));
    }

    #[test]
    fn regions_come_from_a_city_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.mmdb");
        write_db(
            &path,
            &[
                ("192.0.2.0/25", "DE/BY"),
                ("192.0.2.128/25", "DE/BE"),
                ("198.51.100.0/24", "AT"),
                ("2001:db8::/32", "cc:US/Ohio"),
            ],
        );
        let db = GeoDb::open(&path);
        assert_eq!(
            db.status().loaded.as_deref(),
            Some("Test-Country (countries and regions)")
        );
        let mut v = GeoView::new(&Geo::new(db));
        assert_eq!(v.region("192.0.2.1"), Some("DE-BY"));
        assert_eq!(v.region("192.0.2.200"), Some("DE-BE"));
        assert_eq!(v.country("192.0.2.200"), "DE");
        // Cached by address and by record: the same answers again.
        assert_eq!(v.region("192.0.2.1"), Some("DE-BY"));
        assert_eq!(v.place_at(client_addr("192.0.2.9")), ("DE", Some("DE-BY")));
        assert_eq!(v.region("198.51.100.1"), None);
        assert_eq!(v.country("198.51.100.1"), "AT");
        assert_eq!(
            v.place_at(client_addr("2001:db8::5")),
            ("US", Some("US-Ohio"))
        );
        assert_eq!(v.place_at(client_addr("203.0.113.1")), (UNKNOWN, None));
        assert_eq!(v.place_at(None), (UNKNOWN, None));
    }

    #[test]
    fn no_database_means_unknown() {
        let mut v = GeoView::new(&Geo::none());
        assert!(!v.configured());
        assert_eq!(v.country("192.0.2.1"), UNKNOWN);
        assert_eq!(Geo::none(), Geo::default());
    }
}
