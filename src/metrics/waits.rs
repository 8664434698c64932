//! Concurrency and waiting (contract §14), per rule: the slots this node holds for requests
//! in flight, the requests waiting in line for one, and how long queued and delayed requests
//! waited. Bounded by the config's rules.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntGaugeVec, Opts, Registry};

pub struct WaitMetrics {
    in_flight: IntGaugeVec,
    waiting: IntGaugeVec,
    waited: HistogramVec,
}

impl WaitMetrics {
    pub fn new(registry: &Registry) -> Result<WaitMetrics, prometheus::Error> {
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "ratelimiter_in_flight",
                "Requests of concurrency rules in flight through this node (slots it holds), by rule.",
            ),
            &["rule"],
        )?;
        let waiting = IntGaugeVec::new(
            Opts::new(
                "ratelimiter_queue_waiting",
                "Requests waiting in line for a concurrency slot on this node, by rule.",
            ),
            &["rule"],
        )?;
        let waited = HistogramVec::new(
            HistogramOpts::new(
                "ratelimiter_wait_seconds",
                "How long queued requests waited for a slot (admitted or not) and delayed requests were held, by rule.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["rule"],
        )?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(waiting.clone()))?;
        registry.register(Box::new(waited.clone()))?;
        Ok(WaitMetrics {
            in_flight,
            waiting,
            waited,
        })
    }

    /// A slot of `rule` taken (`+1`) or freed (`-1`) on this node.
    pub fn in_flight(&self, rule: &str, by: i64) {
        self.in_flight.with_label_values(&[rule]).add(by);
    }

    /// A request of `rule` started (`+1`) or stopped (`-1`) waiting in line.
    pub fn waiting(&self, rule: &str, by: i64) {
        self.waiting.with_label_values(&[rule]).add(by);
    }

    /// A request of `rule` waited this long (in line, or delayed).
    pub fn waited(&self, rule: &str, took: Duration) {
        self.waited
            .with_label_values(&[rule])
            .observe(took.as_secs_f64());
    }
}
