//! Test-only random faults for keyed `POST /v1/events` batches (cargo feature
//! `fault-injection`; without it every function here is an empty stub the compiler removes,
//! and the environment is never read).
//!
//! `PIXELD_TEST_HTTP_FAULTS=503:P,503-prefix:P,reset:P,abort:P[,seed:N]` (any subset, each P a
//! probability in 0..=1, their sum at most 1): for each batch with an `Idempotency-Key` that
//! is about to be stored, one draw picks at most one fault:
//! - `503`: the log refuses the batch's first line (not yet stored) as under backpressure:
//!   503 with `Retry-After`, `"stored": <lines stored by earlier attempts>`, nothing appended.
//! - `503-prefix`: the log refuses line k + 1 of what this attempt appends, k drawn from
//!   1..rest (a batch of one line left gets the plain `503`): k lines are appended, made
//!   durable, and the 503 says `"stored"` (earlier attempts' lines plus k) of `"lines"`. The
//!   retry must store only the rest.
//! - `reset`: the batch is stored, durable, and its key completed with the answer; then the
//!   connection is closed with a TCP reset (`SO_LINGER` 0) instead of the answer, as if the
//!   answer were lost on the way. The retry gets the stored answer (`Idempotent-Replayed`).
//! - `abort`: the process aborts once the batch is durable, before its key is completed and
//!   before the answer (the same place as `PIXELD_TEST_ABORT_AFTER_DURABLE`): a crash between
//!   the fsync and the answer. The retry, after a restart, resolves the pending key from the
//!   log.
//!
//! Refused lines are counted as `backpressure` drops, as a real refusal of that kind is. The
//! draws come from a small per-shard generator seeded from `seed` (default: the clock), the
//! shard and the process id, so that a restarted process does not repeat its predecessor's
//! faults. Each shard prints one line naming the faults when it first draws. A spec that does
//! not parse stops the process (exit 2) naming the fault, never a silent run without faults.
//! Batches without a key, and replays (`Idempotent-Replayed`, 409, 422), draw nothing.

/// What to do to one keyed batch (without the feature, always `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub(crate) enum Fault {
    None,
    /// Append only the first `at` lines of this attempt, then refuse as under backpressure.
    Refuse {
        at: usize,
    },
    /// Store and complete it, then reset the connection instead of answering.
    Reset,
    /// Abort the process once it is durable, before it is answered.
    Abort,
}

/// The mark a response carries when its connection is to be reset instead of answered
/// (`server.rs` checks it only with the feature).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResetConnection;

/// The fault for a keyed batch whose attempt appends `rest` lines, on shard `shard`.
#[cfg(feature = "fault-injection")]
pub(crate) fn draw(shard: usize, rest: usize) -> Fault {
    imp::draw(shard, rest)
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn draw(_shard: usize, _rest: usize) -> Fault {
    Fault::None
}

/// `r`, marked so that its connection is reset instead of answered.
#[cfg(feature = "fault-injection")]
pub(crate) fn mark_reset(
    mut r: hyper::Response<http_body_util::Full<hyper::body::Bytes>>,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    r.extensions_mut().insert(ResetConnection);
    r
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn mark_reset(
    r: hyper::Response<http_body_util::Full<hyper::body::Bytes>>,
) -> hyper::Response<http_body_util::Full<hyper::body::Bytes>> {
    r
}

/// Whether `r` is marked [`mark_reset`]: then `fd`'s linger is set to 0 (its close sends a
/// reset) and the error makes hyper close the connection without writing `r`.
#[cfg(feature = "fault-injection")]
#[allow(unsafe_code)]
pub(crate) fn reset_if_marked<B>(
    r: &hyper::Response<B>,
    fd: std::os::fd::RawFd,
) -> std::io::Result<()> {
    if r.extensions().get::<ResetConnection>().is_none() {
        return Ok(());
    }
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `fd` is the connection's socket, open while hyper serves the request whose
    // answer this is (the caller runs inside that connection's service); the option value is
    // a valid `linger` of the size passed, only read by the kernel.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        eprintln!(
            "pixeld: PIXELD_TEST_HTTP_FAULTS: SO_LINGER failed ({}); the connection is closed without a reset",
            std::io::Error::last_os_error()
        );
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "reset injected by PIXELD_TEST_HTTP_FAULTS",
    ))
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub(crate) fn reset_if_marked<B>(
    _r: &hyper::Response<B>,
    _fd: std::os::fd::RawFd,
) -> std::io::Result<()> {
    Ok(())
}

#[cfg(feature = "fault-injection")]
mod imp {
    use std::cell::RefCell;

    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::Fault;

    /// The probabilities of `PIXELD_TEST_HTTP_FAULTS`.
    #[derive(Debug, Clone, Copy, Default, PartialEq)]
    pub(super) struct Spec {
        pub refuse: f64,
        pub refuse_prefix: f64,
        pub reset: f64,
        pub abort: f64,
        pub seed: Option<u64>,
    }

    pub(super) fn parse(text: &str) -> Result<Spec, String> {
        let mut s = Spec::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once(':')
                .ok_or_else(|| format!("{part:?} is not NAME:VALUE"))?;
            if name == "seed" {
                s.seed = Some(
                    value
                        .parse()
                        .map_err(|_| format!("seed {value:?} is not an integer"))?,
                );
                continue;
            }
            let p: f64 = value
                .parse()
                .ok()
                .filter(|p: &f64| (0.0..=1.0).contains(p))
                .ok_or_else(|| format!("{name}: {value:?} is not a probability in 0..=1"))?;
            match name {
                "503" => s.refuse = p,
                "503-prefix" => s.refuse_prefix = p,
                "reset" => s.reset = p,
                "abort" => s.abort = p,
                _ => {
                    return Err(format!(
                        "unknown fault {name:?} (503, 503-prefix, reset, abort, seed)"
                    ))
                }
            }
        }
        if s.refuse + s.refuse_prefix + s.reset + s.abort > 1.0 + 1e-9 {
            return Err("the probabilities add up to more than 1".into());
        }
        Ok(s)
    }

    /// The fault of a uniform draw `u` in 0..1 for an attempt of `rest` lines; `k` picks the
    /// prefix of a `503-prefix`.
    pub(super) fn pick(s: &Spec, u: f64, rest: usize, k: impl FnOnce(usize) -> usize) -> Fault {
        let mut edge = s.refuse;
        if u < edge {
            return if rest == 0 {
                Fault::None
            } else {
                Fault::Refuse { at: 0 }
            };
        }
        edge += s.refuse_prefix;
        if u < edge {
            return match rest {
                0 => Fault::None,
                1 => Fault::Refuse { at: 0 },
                n => Fault::Refuse {
                    at: k(n).clamp(1, n - 1),
                },
            };
        }
        edge += s.reset;
        if u < edge {
            return Fault::Reset;
        }
        edge += s.abort;
        if u < edge {
            return Fault::Abort;
        }
        Fault::None
    }

    /// One shard's faults: the spec, its generator, and the draws so far.
    struct State {
        spec: Spec,
        rng: SmallRng,
        draws: u64,
    }

    thread_local! {
        /// This shard's state; None until the first draw, Some(None) when unset.
        static STATE: RefCell<Option<Option<State>>> = const { RefCell::new(None) };
    }

    fn init(shard: usize) -> Option<State> {
        let text = std::env::var("PIXELD_TEST_HTTP_FAULTS").ok()?;
        let spec = match parse(&text) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("pixeld: PIXELD_TEST_HTTP_FAULTS={text:?}: {e}");
                std::process::exit(2);
            }
        };
        let base = spec.seed.unwrap_or_else(crate::sys::now_ns);
        let seed = base
            ^ (shard as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ u64::from(std::process::id()).rotate_left(32);
        eprintln!(
            "pixeld: shard {shard}: PIXELD_TEST_HTTP_FAULTS set: keyed batches get 503 {}, 503 after a prefix {}, reset before the answer {}, abort after the fsync {} (seed {seed})",
            spec.refuse, spec.refuse_prefix, spec.reset, spec.abort
        );
        Some(State {
            spec,
            rng: SmallRng::seed_from_u64(seed),
            draws: 0,
        })
    }

    pub(super) fn draw(shard: usize, rest: usize) -> Fault {
        STATE.with(|st| {
            let mut st = st.borrow_mut();
            let Some(state) = st.get_or_insert_with(|| init(shard)).as_mut() else {
                return Fault::None;
            };
            state.draws += 1;
            let u: f64 = state.rng.gen();
            let spec = state.spec;
            pick(&spec, u, rest, |n| state.rng.gen_range(1..n))
        })
    }

    /// Draws made on this shard so far.
    pub(super) fn draws() -> u64 {
        STATE.with(|st| {
            st.borrow()
                .as_ref()
                .and_then(|s| s.as_ref())
                .map_or(0, |s| s.draws)
        })
    }
}

/// Keyed batches that drew on this shard (for the abort's message).
#[cfg(feature = "fault-injection")]
pub(crate) fn draws() -> u64 {
    imp::draws()
}

#[cfg(all(test, feature = "fault-injection"))]
mod tests {
    use super::imp::{parse, pick, Spec};
    use super::Fault;

    #[test]
    fn specs_parse_and_refuse_what_is_not_one() {
        let s = parse("503:0.05, 503-prefix:0.1,reset:0.05,abort:0.001,seed:7").unwrap();
        assert_eq!(
            s,
            Spec {
                refuse: 0.05,
                refuse_prefix: 0.1,
                reset: 0.05,
                abort: 0.001,
                seed: Some(7),
            }
        );
        assert_eq!(parse("").unwrap(), Spec::default());
        for bad in ["503", "503:2", "drop:0.1", "seed:x", "503:0.6,reset:0.6"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_draw_picks_one_band() {
        let s = parse("503:0.1,503-prefix:0.1,reset:0.1,abort:0.1").unwrap();
        let k = |n: usize| n / 2;
        assert_eq!(pick(&s, 0.05, 5, k), Fault::Refuse { at: 0 });
        assert_eq!(pick(&s, 0.15, 5, k), Fault::Refuse { at: 2 });
        assert_eq!(pick(&s, 0.15, 1, k), Fault::Refuse { at: 0 });
        assert_eq!(pick(&s, 0.15, 2, |_| 9), Fault::Refuse { at: 1 });
        assert_eq!(pick(&s, 0.25, 5, k), Fault::Reset);
        assert_eq!(pick(&s, 0.35, 5, k), Fault::Abort);
        assert_eq!(pick(&s, 0.45, 5, k), Fault::None);
        // Nothing left to store: nothing to refuse.
        assert_eq!(pick(&s, 0.05, 0, k), Fault::None);
    }
}
