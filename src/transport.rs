//! How a record arrived: imported, or over UDP, TCP or HTTP. The ingest paths stamp it, the
//! log stores it in each record's source byte (`log::format` owns that encoding), and the
//! counters are labelled by it. It stands alone at the bottom of the crate so that none of
//! those layers has to import another to name it.

/// The transport a record arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Transport {
    /// Appended by `pixeld import` (or a test), not received from the network. Not a choice
    /// of `pixeld blast --transport`.
    #[value(skip)]
    Import,
    Udp,
    Tcp,
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Import => "import",
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Http => "http",
        }
    }
}
