//! The Prometheus exposition the edge and the workers serve at `GET /metrics`
//! (docs/operations.md §7): one metrics library, the `metrics` facade with
//! `metrics-exporter-prometheus` rendering, so no binary writes the text format by hand.
//!
//! Every exposition carries `switchboard_build_info{binary,version} 1` and the process
//! metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`, open fds,
//! threads, start time), read from /proc when scraped.
//!
//! Two ways to hold the registry:
//! - [`Exposition::local`]: the registry belongs to the value, nothing global. The edge
//!   registers its handles once with [`Exposition::with`] and keeps them; a library
//!   that builds two edges in one process gets two registries.
//! - [`Exposition::global`]: installed as the process's recorder, so `metrics::counter!`
//!   anywhere in the binary lands in it. The workers use this: their jobs and sinks are
//!   spread over many modules and none should have to carry a registry around.
//!
//! The exporter runs without its HTTP listener (axum serves the route), so nothing
//! drains its histograms in the background: [`Exposition::render`] runs the upkeep.

use metrics::Recorder;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// The content type of [`Exposition::render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A histogram's name and its bucket bounds (seconds); without bounds the exporter
/// would render a summary, which Prometheus cannot aggregate across processes.
pub type Buckets = (&'static str, &'static [f64]);

/// One binary's metrics registry and its text exposition.
pub struct Exposition {
    handle: PrometheusHandle,
    /// The registry when it is not the global recorder.
    local: Option<PrometheusRecorder>,
    process: metrics_process::Collector,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition")
            .field("global", &self.local.is_none())
            .finish_non_exhaustive()
    }
}

/// The global recorder was installed already (a second [`Exposition::global`]).
#[derive(Debug, thiserror::Error)]
#[error("a global metrics recorder is installed already")]
pub struct AlreadyInstalled;

impl Exposition {
    /// A registry owned by the returned value; `binary` labels `switchboard_build_info`.
    pub fn local(binary: &'static str, histograms: &[Buckets]) -> Exposition {
        let recorder = builder(histograms).build_recorder();
        let exposition = Exposition {
            handle: recorder.handle(),
            local: Some(recorder),
            process: metrics_process::Collector::default(),
        };
        exposition.with(|| exposition.describe(binary));
        exposition
    }

    /// A registry installed as the process's global recorder.
    pub fn global(
        binary: &'static str,
        histograms: &[Buckets],
    ) -> Result<Exposition, AlreadyInstalled> {
        let handle = builder(histograms)
            .install_recorder()
            .map_err(|_| AlreadyInstalled)?;
        let exposition = Exposition {
            handle,
            local: None,
            process: metrics_process::Collector::default(),
        };
        exposition.describe(binary);
        Ok(exposition)
    }

    /// Runs `register` with this registry as the recorder: the `metrics::counter!`,
    /// `gauge!` and `histogram!` handles made inside stay bound to it afterwards.
    pub fn with<T>(&self, register: impl FnOnce() -> T) -> T {
        match &self.local {
            Some(recorder) => metrics::with_local_recorder(recorder as &dyn Recorder, register),
            None => register(),
        }
    }

    /// The text exposition, process metrics read now.
    pub fn render(&self) -> String {
        self.with(|| self.process.collect());
        self.handle.run_upkeep();
        self.handle.render()
    }

    fn describe(&self, binary: &'static str) {
        metrics::describe_gauge!(
            "switchboard_build_info",
            "Always 1; labels name the binary and its version."
        );
        metrics::gauge!(
            "switchboard_build_info",
            "binary" => binary,
            "version" => env!("CARGO_PKG_VERSION"),
        )
        .set(1.0);
        self.process.describe();
        self.process.collect();
    }
}

fn builder(histograms: &[Buckets]) -> PrometheusBuilder {
    let mut builder = PrometheusBuilder::new();
    for (name, bounds) in histograms {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_string()), bounds)
            .expect("bucket bounds are constants and never empty");
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_exposition_has_build_info_process_metrics_and_bucketed_histograms() {
        let exposition = Exposition::local("test", &[("t_seconds", &[0.1, 1.0])]);
        let (counter, histogram) = exposition.with(|| {
            (
                metrics::counter!("t_total", "job" => "a"),
                metrics::histogram!("t_seconds"),
            )
        });
        counter.increment(2);
        histogram.record(0.5);
        let text = exposition.render();
        let version = env!("CARGO_PKG_VERSION");
        for line in [
            format!("switchboard_build_info{{binary=\"test\",version=\"{version}\"}} 1"),
            "t_total{job=\"a\"} 2".to_string(),
            "t_seconds_bucket{le=\"1\"} 1".to_string(),
            "t_seconds_count 1".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(text.contains("process_cpu_seconds_total"), "{text}");
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
        // Nothing leaks into the global recorder (there is none in this test binary).
        assert!(!Exposition::local("other", &[]).render().contains("t_total"));
    }
}
