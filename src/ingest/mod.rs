//! Receiving hits on every shard. `framing` splits TCP byte streams into frames.

pub mod framing;
