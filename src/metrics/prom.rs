//! One small writer of the Prometheus text exposition format (version 0.0.4), used by every
//! section of `/metrics`: the shards' counters (`metrics::render`), the consumers' lag
//! (`readers.rs`) and the Kafka export's counters (`export/mod.rs`). A family is its `# HELP`
//! and `# TYPE` lines followed by its samples; values are written with `Display`, so integer
//! counters stay integers and seconds keep their fraction.

use std::fmt::{Display, Write};

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Prometheus text being written.
#[derive(Debug, Default)]
pub struct Prom {
    out: String,
}

impl Prom {
    pub fn with_capacity(bytes: usize) -> Self {
        Prom {
            out: String::with_capacity(bytes),
        }
    }

    /// The `# HELP` and `# TYPE` lines that open a family.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
        self
    }

    /// One sample: `name{labels} value` (`labels` is empty or a whole `{…}`).
    pub fn sample(&mut self, name: &str, labels: &str, value: impl Display) -> &mut Self {
        let _ = writeln!(self.out, "{name}{labels} {value}");
        self
    }

    /// A family with one sample per row of (labels, value).
    pub fn rows<V: Display>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        rows: impl IntoIterator<Item = (String, V)>,
    ) -> &mut Self {
        self.family(name, kind, help);
        for (labels, v) in rows {
            self.sample(name, &labels, v);
        }
        self
    }

    /// A counter family with one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: impl Display) -> &mut Self {
        self.family(name, Kind::Counter, help)
            .sample(name, "", value)
    }

    /// A gauge family with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Display) -> &mut Self {
        self.family(name, Kind::Gauge, help).sample(name, "", value)
    }

    /// A histogram: `counts` per bucket of `bounds` (one more count last, for +Inf), written
    /// cumulatively, then the sum and the count.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        bounds: &[f64],
        counts: &[u64],
        sum: f64,
    ) -> &mut Self {
        self.family(name, Kind::Histogram, help);
        let mut cum = 0;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            let le = bounds.get(i).map_or("+Inf".to_string(), |v| v.to_string());
            self.sample(&format!("{name}_bucket"), &format!("{{le=\"{le}\"}}"), cum);
        }
        self.sample(&format!("{name}_sum"), "", sum);
        self.sample(&format!("{name}_count"), "", cum)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_histograms_in_the_text_format() {
        let mut p = Prom::default();
        p.counter("a_total", "As.", 3)
            .rows(
                "b",
                Kind::Gauge,
                "Bs.",
                [("{shard=\"0\"}".to_string(), -1i64)],
            )
            .histogram("h_seconds", "Hs.", &[0.5, 1.0], &[1, 0, 2], 4.25);
        assert_eq!(
            p.finish(),
            "# HELP a_total As.\n# TYPE a_total counter\na_total 3\n\
             # HELP b Bs.\n# TYPE b gauge\nb{shard=\"0\"} -1\n\
             # HELP h_seconds Hs.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{le=\"0.5\"} 1\nh_seconds_bucket{le=\"1\"} 1\n\
             h_seconds_bucket{le=\"+Inf\"} 3\nh_seconds_sum 4.25\nh_seconds_count 3\n"
        );
    }
}
