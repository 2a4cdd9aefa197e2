//! Prometheus metrics of the server, served as text at `/metrics`.
//!
//! Every metric of the process is registered here, and only here. One
//! [`Metrics`] value is created at start-up and cloned into every part that
//! counts something (sessions, pool, workers, remote pool, auth); the clones
//! share the same registry, so a scrape sees everything. Plumbing below
//! every layer: imports nothing from the crate.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Why a session dropped a frame: the label of `drops_total{reason}`, and
/// the field of the session's `stats` message it is also counted in
/// (`actors::session::SessionStats::count_drop` counts both at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Replaced in the session's slot by a newer frame (latest wins).
    Stale,
    /// Above the session's fps cap.
    Fps,
    /// Shed by the pool: its queue was full, or the remote backlog trimmed it.
    Overload,
    /// Waited in the pool past its time to live.
    Expired,
    /// Vanished without an answer (its worker was killed).
    Lost,
}

impl DropReason {
    /// Every reason, for zeroed series and tests.
    pub const ALL: [DropReason; 5] = [
        DropReason::Stale,
        DropReason::Fps,
        DropReason::Overload,
        DropReason::Expired,
        DropReason::Lost,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Stale => "stale",
            DropReason::Fps => "fps",
            DropReason::Overload => "overload",
            DropReason::Expired => "expired",
            DropReason::Lost => "lost",
        }
    }
}

/// Outcomes of a remote pool's jobs: the labels of `remote_jobs_total`.
pub const REMOTE_JOB_OUTCOMES: [&str; 7] = [
    "submitted",
    "result",
    "trimmed",
    "expired",
    "lost",
    "refused",
    "late",
];

/// Every metric the server exports. Cheap to clone (the collectors are `Arc`s
/// inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// WebSocket sessions currently open.
    pub sessions_active: IntGauge,
    /// Frames by `outcome`: `received`, `processed`, `error`.
    pub frames_total: IntCounterVec,
    /// Frames dropped by `reason`: `stale`, `fps`, `overload`, `expired`, `lost`.
    pub drops_total: IntCounterVec,
    /// Jobs waiting in the inference pool's queue.
    pub queue_depth: IntGauge,
    /// Wall time of one Holistic forward pass (decode excluded), seconds.
    pub inference_seconds: Histogram,
    /// Frames run together by a batching model thread (`pool.max_batch`
    /// above 1, a GPU): one observation per batch.
    pub inference_batch_frames: Histogram,
    /// Inference workers replaced, by `reason`: `panic`, `stall`.
    pub worker_restarts_total: IntCounterVec,
    /// WebSocket protocol errors sent to clients, by `code` (`bad_frame`, ...).
    pub ws_errors_total: IntCounterVec,
    /// Login attempts by `outcome`: `ok`, `wrong_password`, `rate_limited`,
    /// `unavailable` (session store could not be written).
    pub logins_total: IntCounterVec,
    /// Sessions revoked through `/auth/logout`.
    pub logouts_total: IntCounter,
    /// Session store round trips to Redis that failed (timeout, connection).
    pub store_redis_errors_total: IntCounter,
    /// Sessions currently held in the local session map.
    pub store_sessions: IntGauge,
    /// 1 while wrong entry codes from all addresses together exceed
    /// `auth.global_failures_alert_per_min` in the current minute.
    pub login_failures_alert: IntGauge,
    /// Minutes in which that ceiling was crossed.
    pub login_failure_alerts_total: IntCounter,
    /// Stalled inference threads abandoned and still running (each holds a
    /// model); at `pool.max_abandoned_threads` the pool stops replacing.
    pub abandoned_threads: IntGauge,
    /// Jobs of the remote pool by `outcome` ([`REMOTE_JOB_OUTCOMES`]).
    pub remote_jobs_total: IntCounterVec,
    /// Tasks alive on the runtime of each HTTP worker `thread`, sampled when
    /// a WebSocket opens: a leak of connection tasks shows as growth here.
    pub http_runtime_alive_tasks: IntGaugeVec,
    /// WebRTC ingest (`actors::rtc`).
    pub rtc: RtcMetrics,
}

/// The metrics of WebRTC ingest.
#[derive(Clone)]
pub struct RtcMetrics {
    /// WebRTC peers currently open (each also counts in `sessions_active`).
    pub sessions_active: IntGauge,
    /// The UDP port every peer shares (0 while WebRTC ingest is off).
    pub udp_port: IntGauge,
    /// RTP packets that never arrived (gaps in the sequence after the
    /// jitter buffer and retransmissions).
    pub packets_lost_total: IntCounter,
    /// Keyframe requests (PLI) sent, by `reason`: `loss`, `decode_error`,
    /// `start` (a stream that began without one).
    pub keyframe_requests_total: IntCounterVec,
    /// Encoded frames decoded, by `codec`: `h264`, `vp8`.
    pub frames_decoded_total: IntCounterVec,
    /// Time to decode one encoded frame (colour conversion excluded: only
    /// pictures that reach inference are converted, on the workers), by
    /// `codec`.
    pub decode_seconds: HistogramVec,
    /// Encoded frames dropped before decoding, by `reason`: `queue_full`
    /// (the decoder fell behind), `too_big`.
    pub frames_dropped_total: IntCounterVec,
    /// Results not delivered: the peer opened no data channel (a stock WHIP
    /// encoder), or its channel was backed up.
    pub results_undelivered_total: IntCounter,
    /// UDP datagrams that belonged to no peer (garbage, or a peer already
    /// gone).
    pub udp_unmatched_total: IntCounter,
    /// Peers torn down, by `reason`: `delete`, `timeout`, `ice_failed`,
    /// `session_ended`, `shutdown`.
    pub closed_total: IntCounterVec,
}

impl RtcMetrics {
    fn new(registry: &Registry) -> RtcMetrics {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric registration");
            c
        }
        let counter_vec = |name: &str, help: &str, label: &str, known: &[&str]| {
            let c = reg(
                registry,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("metric options"),
            );
            for value in known {
                c.with_label_values(&[*value]);
            }
            c
        };
        let gauge = |name: &str, help: &str| {
            reg(registry, IntGauge::new(name, help).expect("metric options"))
        };
        let counter = |name: &str, help: &str| {
            reg(
                registry,
                IntCounter::new(name, help).expect("metric options"),
            )
        };
        let decode_seconds = reg(
            registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "rtc_decode_seconds",
                    "Time to decode one encoded video frame, seconds",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128,
                ]),
                &["codec"],
            )
            .expect("metric options"),
        );
        for codec in ["h264", "vp8"] {
            decode_seconds.with_label_values(&[codec]);
        }
        RtcMetrics {
            sessions_active: gauge("rtc_sessions_active", "WebRTC peers currently open"),
            udp_port: gauge("rtc_udp_port", "The UDP port of WebRTC ingest (0: off)"),
            packets_lost_total: counter("rtc_packets_lost_total", "RTP packets that never arrived"),
            keyframe_requests_total: counter_vec(
                "rtc_keyframe_requests_total",
                "Keyframe requests (PLI) sent, by reason",
                "reason",
                &["loss", "decode_error", "start"],
            ),
            frames_decoded_total: counter_vec(
                "rtc_frames_decoded_total",
                "Encoded video frames decoded, by codec",
                "codec",
                &["h264", "vp8"],
            ),
            decode_seconds,
            frames_dropped_total: counter_vec(
                "rtc_frames_dropped_total",
                "Encoded video frames dropped before decoding, by reason",
                "reason",
                &["queue_full", "too_big"],
            ),
            results_undelivered_total: counter(
                "rtc_results_undelivered_total",
                "Results not delivered (no data channel, or it was backed up)",
            ),
            udp_unmatched_total: counter(
                "rtc_udp_unmatched_total",
                "UDP datagrams that belonged to no WebRTC peer",
            ),
            closed_total: counter_vec(
                "rtc_closed_total",
                "WebRTC peers torn down, by reason",
                "reason",
                &[
                    "delete",
                    "timeout",
                    "ice_failed",
                    "session_ended",
                    "shutdown",
                ],
            ),
        }
    }
}

impl Metrics {
    /// Creates the collectors and registers them in a fresh registry.
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("holistream".into()), None)
            // unwrap: the prefix is a constant valid metric name.
            .unwrap();

        // Registration fails only on duplicate names or invalid options, both
        // constants here: a panic at start-up is the right signal for that bug.
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone()))
                .expect("metric registration");
            c
        }
        let counter_vec = |name: &str, help: &str, label: &str| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), &[label]).expect("metric options"),
            )
        };

        let sessions_active = reg(
            &registry,
            IntGauge::new(
                "sessions_active",
                "Client sessions currently open (WebSocket and WebRTC)",
            )
            .expect("metric options"),
        );
        let frames_total = counter_vec("frames_total", "Frames by outcome", "outcome");
        let drops_total = counter_vec("drops_total", "Frames dropped, by reason", "reason");
        let queue_depth = reg(
            &registry,
            IntGauge::new("queue_depth", "Jobs waiting in the inference pool queue")
                .expect("metric options"),
        );
        let inference_seconds = reg(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new("inference_seconds", "Holistic forward pass time, seconds")
                    .buckets(vec![
                        0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
                    ]),
            )
            .expect("metric options"),
        );
        let inference_batch_frames = reg(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "inference_batch_frames",
                    "Frames per batch of a batching model thread",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            )
            .expect("metric options"),
        );
        let worker_restarts_total = counter_vec(
            "worker_restarts_total",
            "Inference workers replaced, by reason",
            "reason",
        );
        let ws_errors_total = counter_vec(
            "ws_errors_total",
            "Error messages sent to WebSocket clients, by code",
            "code",
        );
        let logins_total = counter_vec("logins_total", "Login attempts by outcome", "outcome");
        let logouts_total = reg(
            &registry,
            IntCounter::new("logouts_total", "Sessions revoked by logout").expect("metric options"),
        );
        let store_redis_errors_total = reg(
            &registry,
            IntCounter::new(
                "store_redis_errors_total",
                "Failed session store round trips to Redis",
            )
            .expect("metric options"),
        );
        let store_sessions = reg(
            &registry,
            IntGauge::new("store_sessions", "Sessions held in the local session map")
                .expect("metric options"),
        );

        let login_failures_alert = reg(
            &registry,
            IntGauge::new(
                "login_failures_alert",
                "1 while wrong entry codes from all addresses exceed the per-minute ceiling",
            )
            .expect("metric options"),
        );
        let login_failure_alerts_total = reg(
            &registry,
            IntCounter::new(
                "login_failure_alerts_total",
                "Minutes in which wrong entry codes exceeded the global ceiling",
            )
            .expect("metric options"),
        );
        let abandoned_threads = reg(
            &registry,
            IntGauge::new(
                "abandoned_threads",
                "Stalled inference threads abandoned and still running",
            )
            .expect("metric options"),
        );

        let remote_jobs_total = counter_vec(
            "remote_jobs_total",
            "Jobs of the remote pool, by outcome",
            "outcome",
        );
        let http_runtime_alive_tasks = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "http_runtime_alive_tasks",
                    "Tasks alive on an HTTP worker's runtime, sampled at each WebSocket open",
                ),
                &["thread"],
            )
            .expect("metric options"),
        );

        // Touch the label values we know, so a scrape shows zeros instead of
        // missing series before the first event.
        for outcome in ["received", "processed", "error"] {
            frames_total.with_label_values(&[outcome]);
        }
        for reason in DropReason::ALL {
            drops_total.with_label_values(&[reason.label()]);
        }
        for reason in ["panic", "stall"] {
            worker_restarts_total.with_label_values(&[reason]);
        }
        for outcome in [
            "ok",
            "wrong_password",
            "rate_limited",
            "unavailable",
            "bearer_ok",
            "wrong_token",
        ] {
            logins_total.with_label_values(&[outcome]);
        }

        let rtc = RtcMetrics::new(&registry);
        Metrics {
            registry,
            sessions_active,
            frames_total,
            drops_total,
            queue_depth,
            inference_seconds,
            inference_batch_frames,
            worker_restarts_total,
            ws_errors_total,
            logins_total,
            logouts_total,
            store_redis_errors_total,
            store_sessions,
            login_failures_alert,
            login_failure_alerts_total,
            abandoned_threads,
            remote_jobs_total,
            http_runtime_alive_tasks,
            rtc,
        }
    }

    /// Counts one dropped frame in `drops_total` (the session's own count
    /// goes with it: `SessionStats::count_drop`).
    pub fn count_drop(&self, reason: DropReason) {
        self.drops_total.with_label_values(&[reason.label()]).inc();
    }

    /// All metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // unwrap: the text encoder only fails on writer errors, and a Vec
        // never fails to write.
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .unwrap();
        // unwrap: the text encoder writes UTF-8 only.
        String::from_utf8(out).unwrap()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_counted_events_with_labels() {
        let m = Metrics::new();
        m.drops_total.with_label_values(&["stale"]).inc_by(3);
        m.worker_restarts_total.with_label_values(&["panic"]).inc();
        m.sessions_active.set(2);
        m.inference_seconds.observe(0.03);
        let text = m.render();
        assert!(
            text.contains("holistream_drops_total{reason=\"stale\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("holistream_drops_total{reason=\"fps\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("holistream_worker_restarts_total{reason=\"panic\"} 1"),
            "{text}"
        );
        assert!(text.contains("holistream_sessions_active 2"), "{text}");
        assert!(
            text.contains("holistream_inference_seconds_count 1"),
            "{text}"
        );
    }

    #[test]
    fn clones_share_the_registry() {
        let a = Metrics::new();
        let b = a.clone();
        b.frames_total.with_label_values(&["processed"]).inc();
        assert!(
            a.render()
                .contains("holistream_frames_total{outcome=\"processed\"} 1")
        );
    }
}
