//! Command-line tools beside the server, each a library function that `main.rs` calls:
//! `blast` (load generator) with `gen` (its deterministic nginx lines, also used by tests and
//! benches), `tail` (a named consumer over the log API), and the offline data-dir tools
//! `replay`, `check` (with `check_aggregates`), `rebuild_aggregates` and `import`. Nothing in
//! the server imports this module.

pub mod blast;
pub mod blast_args;
pub mod check;
pub mod check_aggregates;
pub mod gen;
pub mod import;
pub mod rebuild_aggregates;
pub mod replay;
pub mod tail;
