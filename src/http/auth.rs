//! Access to the HTTP port: the `auth_token` and the list of paths served without it. With a
//! token configured, the router checks `Authorization: Bearer …` (compared in constant time)
//! before anything else, for every path except the pixel (browsers send it without a token),
//! health, and the dashboard's static shell, which holds no data. One central check, so that
//! no endpoint added later can forget it.

/// The API token (`auth_token`). Its `Debug` never shows it.
#[derive(Clone)]
pub struct AuthToken(Vec<u8>);

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl AuthToken {
    /// Shortest accepted token: a guessable one would defeat the point.
    pub const MIN_LEN: usize = 16;

    /// Checks that `t` can travel in an `Authorization` header and is long enough; the
    /// reason never contains the token.
    pub fn new(t: &str) -> Result<AuthToken, String> {
        if t.len() < Self::MIN_LEN {
            return Err(format!("shorter than {} characters", Self::MIN_LEN));
        }
        if !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(
                "only printable ASCII without spaces can travel in an Authorization header".into(),
            );
        }
        Ok(AuthToken(t.as_bytes().to_vec()))
    }

    /// Whether an `Authorization` header value carries this token. The comparison takes the
    /// same time wherever the first wrong byte is (`subtle`), so timing cannot guess it.
    pub fn accepts(&self, header: Option<&hyper::header::HeaderValue>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(given) = header.map(|h| h.as_bytes()).and_then(|h| {
            let (scheme, rest) = (h.get(..7)?, h.get(7..)?);
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        }) else {
            return false;
        };
        bool::from(given.trim_ascii().ct_eq(&self.0))
    }
}

/// Paths served without a token: the pixel and the tracking script (browsers cannot add
/// one), health probes, and the dashboard's static shell (no data in it; the page asks for
/// the token).
pub(crate) fn is_public(path: &str) -> bool {
    matches!(path, "/p.gif" | "/healthz" | "/readyz")
        || super::dashboard::asset(path).is_some()
        || super::tracker::owns(path)
}
