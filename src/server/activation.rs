//! Listeners handed over by systemd (socket activation, `sd_listen_fds(3)`): when `LISTEN_FDS`
//! is set for this process, pixeld binds nothing itself and serves the sockets it was given,
//! which belong to systemd and outlive pixeld. Datagrams and connections that arrive while
//! pixeld restarts wait in the kernel's queues and are read by the next process.
//!
//! Each socket is told apart by its name (`FileDescriptorName=udp|tcp|http`), or, unnamed, by
//! its type (a datagram socket is UDP) and, for stream sockets, by its address against
//! `listen.tcp` and `listen.http`. Each kind comes as one socket, which every shard then reads
//! (a duplicate descriptor per shard: the kernel hands each datagram or connection to one of
//! them), or as exactly one socket per shard. Anything else (a socket of the wrong type, a
//! stream socket that does not listen, a closed descriptor, a kind missing, a count that fits
//! neither rule) stops the start with one line naming the fix: never a silent fallback to
//! binding a port of its own.
//!
//! The same descriptors also come back from systemd's file descriptor store
//! (`FileDescriptorStoreMax=`, `sd_pid_notify_with_fds(3)` `FDSTORE=1`): when pixeld binds its
//! sockets itself and `listen.fd_store` allows it, each shard hands its UDP, TCP and HTTP
//! sockets to systemd under the names `stored-udp`, `stored-tcp` and `stored-http` (see
//! [`store`]), and the next process after a restart (`systemctl restart`, `Restart=on-failure`
//! after a crash) receives them in `LISTEN_FDS`. Stored sockets are accepted in any number: a
//! restart with another shard count spreads them over the shards (shard `i` reads stored
//! socket `j` for every `j ≡ i (mod shards)`, a shard without one reads a duplicate of socket
//! `i mod stored`), so that none is left unread with datagrams queued in it.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use thiserror::Error;

use crate::config::Config;

/// What went wrong with the descriptors systemd passed.
#[derive(Debug, Error)]
pub enum ActivationError {
    #[error("socket activation: cannot read LISTEN_FDS/LISTEN_FDNAMES: {0}")]
    Env(std::io::Error),
    #[error("socket activation: fd {fd} ({name}) is not an open socket ({reason}); check the ListenDatagram=/ListenStream= lines of pixeld.socket")]
    NotSocket {
        fd: RawFd,
        name: String,
        reason: String,
    },
    #[error("socket activation: fd {fd} named {name:?} is a {got} socket, but pixeld's {name} listener must be a {want} socket; fix FileDescriptorName= or the Listen…= line in pixeld.socket")]
    WrongType {
        fd: RawFd,
        name: String,
        want: &'static str,
        got: &'static str,
    },
    #[error("socket activation: fd {fd} ({name}, {addr}) is a stream socket that does not listen; pass a listening socket (ListenStream=, Accept=no)")]
    NotListening {
        fd: RawFd,
        name: String,
        addr: String,
    },
    #[error("socket activation: fd {fd} (name {name:?}) is a stream socket on {addr}, which is neither listen.tcp ({tcp}) nor listen.http ({http}); name it FileDescriptorName=tcp or =http, or set listen.tcp/listen.http to its address")]
    Unknown {
        fd: RawFd,
        name: String,
        addr: String,
        tcp: SocketAddr,
        http: SocketAddr,
    },
    #[error("socket activation: systemd passed no {kind} socket; add `{directive}=ADDRESS` to pixeld.socket (named FileDescriptorName={kind}, or at listen.{kind}'s address), or start pixeld without LISTEN_FDS to bind its own")]
    Missing {
        kind: &'static str,
        directive: &'static str,
    },
    #[error("socket activation: systemd passed {n} {kind} sockets; pixeld takes one (every shard reads it) or exactly one per shard ({shards})")]
    Count {
        kind: &'static str,
        n: usize,
        shards: usize,
    },
}

/// The kinds of listener, in the order of [`Activated::kinds`].
const KINDS: [(&str, &str); 3] = [
    ("udp", "ListenDatagram"),
    ("tcp", "ListenStream"),
    ("http", "ListenStream"),
];

/// The names under which pixeld puts its own sockets in systemd's file descriptor store, in
/// the order udp, tcp, http.
pub const STORED_NAMES: [&str; 3] = ["stored-udp", "stored-tcp", "stored-http"];

/// The sockets systemd passed, by kind, and their addresses.
#[derive(Debug)]
pub struct Activated {
    /// `[udp, tcp, http]` from a socket unit: one socket each, or one per shard.
    kinds: [Vec<OwnedFd>; 3],
    /// `[udp, tcp, http]` from the file descriptor store: any number.
    stored: [Vec<OwnedFd>; 3],
    shards: usize,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
}

/// One shard's listeners, as descriptors of its own: per kind, those systemd holds (from a
/// socket unit or the file descriptor store). An empty kind is bound by the shard itself.
#[derive(Debug, Default)]
pub struct ShardSockets {
    pub udp: Vec<OwnedFd>,
    pub tcp: Vec<OwnedFd>,
    pub http: Vec<OwnedFd>,
}

impl Activated {
    /// Shard `shard`'s sockets: from a socket unit its own when systemd passed one per shard,
    /// else a duplicate of the shared one; from the store every `j ≡ shard (mod shards)`, or a
    /// duplicate of socket `shard mod stored` when there are fewer than shards.
    pub fn for_shard(&self, shard: usize) -> std::io::Result<ShardSockets> {
        let pick = |i: usize| -> std::io::Result<Vec<OwnedFd>> {
            let mut out = Vec::new();
            let unit = &self.kinds[i];
            if let Some(fd) = unit.get(shard).or_else(|| unit.first()) {
                out.push(fd.try_clone()?);
            }
            let stored = &self.stored[i];
            if !stored.is_empty() {
                let mine: Vec<&OwnedFd> = stored
                    .iter()
                    .skip(shard)
                    .step_by(self.shards.max(1))
                    .collect();
                if mine.is_empty() {
                    out.push(stored[shard % stored.len()].try_clone()?);
                } else {
                    for fd in mine {
                        out.push(fd.try_clone()?);
                    }
                }
            }
            Ok(out)
        };
        Ok(ShardSockets {
            udp: pick(0)?,
            tcp: pick(1)?,
            http: pick(2)?,
        })
    }

    /// How many sockets of each kind (`[udp, tcp, http]`) a socket unit passed.
    pub fn counts(&self) -> [usize; 3] {
        [
            self.kinds[0].len(),
            self.kinds[1].len(),
            self.kinds[2].len(),
        ]
    }

    /// How many sockets of each kind (`[udp, tcp, http]`) came from the file descriptor store.
    pub fn stored_counts(&self) -> [usize; 3] {
        [
            self.stored[0].len(),
            self.stored[1].len(),
            self.stored[2].len(),
        ]
    }
}

/// Whether shards put the sockets they bind themselves in systemd's file descriptor store:
/// only under a service manager (`NOTIFY_SOCKET` set), and with `listen.fd_store = "auto"`
/// only when it says the service has a store (`$FDSTORE`, set by systemd 254 and later when
/// `FileDescriptorStoreMax=` > 0; older systemd logs a warning per socket otherwise).
pub fn store_enabled(cfg: &Config) -> bool {
    use crate::config::FdStore;
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return false;
    }
    match cfg.fd_store {
        FdStore::Yes => true,
        FdStore::No => false,
        FdStore::Auto => std::env::var("FDSTORE")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0),
    }
}

/// Hands one socket pixeld bound itself to systemd's file descriptor store, named for its
/// kind (0 udp, 1 tcp, 2 http), so that it outlives this process: after a restart the next
/// process receives it in `LISTEN_FDS`, with what was queued in it meanwhile.
pub fn store(kind: usize, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    use sd_notify::NotifyState;
    let name = STORED_NAMES
        .get(kind)
        .ok_or_else(|| std::io::Error::other("no such kind of listener"))?;
    sd_notify::notify_with_fds(&[NotifyState::FdStore, NotifyState::FdName(name)], &[fd])
}

fn sock_type(fd: BorrowedFd<'_>) -> std::io::Result<(socket2::Type, bool, Option<SocketAddr>)> {
    let s = socket2::SockRef::from(&fd);
    let ty = s.r#type()?;
    let listening = ty == socket2::Type::STREAM && s.is_listener()?;
    Ok((ty, listening, s.local_addr()?.as_socket()))
}

fn type_name(t: socket2::Type) -> &'static str {
    if t == socket2::Type::DGRAM {
        "datagram"
    } else if t == socket2::Type::STREAM {
        "stream"
    } else {
        "other"
    }
}

/// The listeners systemd passed to this process, if it passed any (`LISTEN_PID` is ours and
/// `LISTEN_FDS` > 0); checked and sorted by kind for `cfg.shards` shards.
pub fn take(cfg: &Config) -> Result<Option<Activated>, ActivationError> {
    let fds: Vec<(RawFd, String)> = sd_notify::listen_fds_with_names()
        .map_err(ActivationError::Env)?
        .collect();
    if fds.is_empty() {
        return Ok(None);
    }
    classify(fds, cfg).map(Some)
}

#[allow(unsafe_code)]
fn classify(fds: Vec<(RawFd, String)>, cfg: &Config) -> Result<Activated, ActivationError> {
    let mut kinds: [Vec<OwnedFd>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut stored: [Vec<OwnedFd>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut addrs: [Option<SocketAddr>; 3] = [None; 3];
    for (fd, name) in fds {
        // SAFETY: fcntl(F_GETFD) on any integer touches no memory; it fails with EBADF when
        // the descriptor is not open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(ActivationError::NotSocket {
                fd,
                name,
                reason: std::io::Error::last_os_error().to_string(),
            });
        }
        // SAFETY: systemd passes these descriptors to this process (LISTEN_PID checked by
        // `listen_fds_with_names`), numbered from 3, and nothing else in pixeld owns them: each
        // is taken exactly once, here.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let (ty, listening, addr) =
            sock_type(owned.as_fd()).map_err(|e| ActivationError::NotSocket {
                fd,
                name: name.clone(),
                reason: e.to_string(),
            })?;
        let addr_text = addr.map_or_else(|| "no address".to_string(), |a| a.to_string());
        let from_store = STORED_NAMES.contains(&name.as_str());
        let kind = match name.as_str() {
            "udp" | "stored-udp" => 0,
            "tcp" | "stored-tcp" => 1,
            "http" | "stored-http" => 2,
            _ if ty == socket2::Type::DGRAM => 0,
            _ if addr == Some(cfg.tcp) => 1,
            _ if addr == Some(cfg.http) => 2,
            _ => {
                return Err(ActivationError::Unknown {
                    fd,
                    name,
                    addr: addr_text,
                    tcp: cfg.tcp,
                    http: cfg.http,
                })
            }
        };
        let want = if kind == 0 {
            socket2::Type::DGRAM
        } else {
            socket2::Type::STREAM
        };
        if ty != want {
            return Err(ActivationError::WrongType {
                fd,
                name: KINDS[kind].0.to_string(),
                want: type_name(want),
                got: type_name(ty),
            });
        }
        if kind > 0 && !listening {
            return Err(ActivationError::NotListening {
                fd,
                name: KINDS[kind].0.to_string(),
                addr: addr_text,
            });
        }
        addrs[kind] = addrs[kind].or(addr);
        if from_store {
            stored[kind].push(owned);
        } else {
            kinds[kind].push(owned);
        }
    }
    // With the file descriptor store in use, a kind it lacks (a failed store, a listener
    // added since) is bound by the shards, which then store it.
    let store_in_use = stored.iter().any(|s| !s.is_empty());
    for (i, (kind, directive)) in KINDS.iter().enumerate() {
        let n = kinds[i].len();
        if n == 0 && !store_in_use {
            return Err(ActivationError::Missing { kind, directive });
        }
        if n > 1 && n != cfg.shards {
            return Err(ActivationError::Count {
                kind,
                n,
                shards: cfg.shards,
            });
        }
    }
    let addr = |i: usize, fallback: SocketAddr| addrs[i].unwrap_or(fallback);
    Ok(Activated {
        udp: addr(0, cfg.udp),
        tcp: addr(1, cfg.tcp),
        http: addr(2, cfg.http),
        kinds,
        stored,
        shards: cfg.shards,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    fn cfg(shards: usize) -> Config {
        let mut c = Config::from_raw(&crate::config::RawConfig::defaults(), "embedded")
            .expect("the embedded config");
        c.shards = shards;
        c
    }

    fn udp() -> (RawFd, SocketAddr) {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = s.local_addr().unwrap();
        (OwnedFd::from(s).into_raw_fd(), a)
    }

    fn listener() -> (RawFd, SocketAddr) {
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = s.local_addr().unwrap();
        (OwnedFd::from(s).into_raw_fd(), a)
    }

    #[test]
    fn named_or_by_type_and_address_one_or_one_per_shard() {
        let (u, ua) = udp();
        let (t, ta) = listener();
        let (h, ha) = listener();
        let a = classify(
            vec![(u, "udp".into()), (t, "tcp".into()), (h, "http".into())],
            &cfg(2),
        )
        .unwrap();
        assert_eq!((a.udp, a.tcp, a.http), (ua, ta, ha));
        assert_eq!(a.counts(), [1, 1, 1]);
        let s = a.for_shard(1).unwrap();
        assert_eq!(
            socket2::SockRef::from(&s.tcp[0])
                .local_addr()
                .unwrap()
                .as_socket(),
            Some(ta)
        );
        // Unnamed: UDP by type, the streams by the configured addresses; two UDP sockets
        // for two shards.
        let (u1, _) = udp();
        let (u2, _) = udp();
        let (t, ta) = listener();
        let (h, ha) = listener();
        let mut c = cfg(2);
        c.tcp = ta;
        c.http = ha;
        let a = classify(
            vec![
                (u1, "pixeld.socket".into()),
                (u2, "pixeld.socket".into()),
                (h, "pixeld.socket".into()),
                (t, "unknown".into()),
            ],
            &c,
        )
        .unwrap();
        assert_eq!(a.counts(), [2, 1, 1]);
        assert_eq!((a.tcp, a.http), (ta, ha));
    }

    fn addr_of(fd: &OwnedFd) -> SocketAddr {
        socket2::SockRef::from(fd)
            .local_addr()
            .unwrap()
            .as_socket()
            .unwrap()
    }

    #[test]
    fn stored_sockets_spread_over_any_shard_count_and_missing_kinds_are_bound() {
        // Four stored UDP sockets (a previous run of 4 shards), one TCP, no HTTP.
        let udps: Vec<(RawFd, SocketAddr)> = (0..4).map(|_| udp()).collect();
        let (t, ta) = listener();
        let mut fds: Vec<(RawFd, String)> = udps
            .iter()
            .map(|(fd, _)| (*fd, "stored-udp".to_string()))
            .collect();
        fds.push((t, "stored-tcp".into()));
        // Three shards now: shard 0 reads stored sockets 0 and 3, shard 1 socket 1, shard 2
        // socket 2; every shard reads (a duplicate of) the one TCP listener; HTTP is bound.
        let a = classify(fds, &cfg(3)).unwrap();
        assert_eq!(a.counts(), [0, 0, 0]);
        assert_eq!(a.stored_counts(), [4, 1, 0]);
        let got: Vec<Vec<SocketAddr>> = (0..3)
            .map(|s| a.for_shard(s).unwrap().udp.iter().map(addr_of).collect())
            .collect();
        assert_eq!(
            got,
            vec![vec![udps[0].1, udps[3].1], vec![udps[1].1], vec![udps[2].1]]
        );
        for s in 0..3 {
            let mine = a.for_shard(s).unwrap();
            assert_eq!(mine.tcp.iter().map(addr_of).collect::<Vec<_>>(), vec![ta]);
            assert!(mine.http.is_empty());
        }
        // Two stored sockets, five shards: shards 2-4 read duplicates (2 mod 2 = 0, 1, 0).
        let udps: Vec<(RawFd, SocketAddr)> = (0..2).map(|_| udp()).collect();
        let fds = udps
            .iter()
            .map(|(fd, _)| (*fd, "stored-udp".to_string()))
            .collect();
        let a = classify(fds, &cfg(5)).unwrap();
        let got: Vec<SocketAddr> = (0..5)
            .map(|s| {
                let u = a.for_shard(s).unwrap().udp;
                assert_eq!(u.len(), 1);
                addr_of(&u[0])
            })
            .collect();
        let (x, y) = (udps[0].1, udps[1].1);
        assert_eq!(got, vec![x, y, x, y, x]);
    }

    #[test]
    fn wrong_missing_and_miscounted_sockets_name_the_fix() {
        let err = |fds: Vec<(RawFd, String)>, shards| {
            classify(fds, &cfg(shards)).unwrap_err().to_string()
        };
        let (u, _) = udp();
        let (t, _) = listener();
        let (h, _) = listener();
        let e = err(
            vec![(u, "tcp".into()), (t, "udp".into()), (h, "http".into())],
            1,
        );
        assert!(
            e.contains("is a datagram socket") && e.contains("must be a stream socket"),
            "{e}"
        );
        let (u, _) = udp();
        let (t, _) = listener();
        let e = err(vec![(u, "udp".into()), (t, "tcp".into())], 1);
        assert!(
            e.contains("no http socket") && e.contains("ListenStream="),
            "{e}"
        );
        // A stream socket that does not listen.
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let s = std::net::TcpStream::from(s);
        let (u, _) = udp();
        let e = err(
            vec![
                (u, "udp".into()),
                (OwnedFd::from(s).into_raw_fd(), "tcp".into()),
            ],
            1,
        );
        assert!(e.contains("does not listen"), "{e}");
        // Three UDP sockets for two shards.
        let fds: Vec<(RawFd, String)> = (0..3)
            .map(|_| (udp().0, "udp".to_string()))
            .chain([(listener().0, "tcp".into()), (listener().0, "http".into())])
            .collect();
        let e = err(fds, 2);
        assert!(
            e.contains("passed 3 udp sockets") && e.contains("one per shard (2)"),
            "{e}"
        );
        // A closed descriptor (a number no test opens), and a file that is not a socket.
        let e = err(vec![(1 << 30, "udp".into())], 1);
        assert!(e.contains("is not an open socket"), "{e}");
        let f = std::fs::File::open("/dev/null").unwrap();
        let e = err(vec![(OwnedFd::from(f).into_raw_fd(), "udp".into())], 1);
        assert!(e.contains("is not an open socket"), "{e}");
        // An unnamed stream socket on neither configured address.
        let (u, _) = udp();
        let (t, _) = listener();
        let e = err(vec![(u, "x".into()), (t, "x".into())], 1);
        assert!(
            e.contains("neither listen.tcp") && e.contains("FileDescriptorName=tcp"),
            "{e}"
        );
    }
}
