//! Control messages the NIF sends to a worker on its stream: the worker's whole settings,
//! sent when the stream opens and again after every change (so the worker always ends at
//! the latest state, in the order changes were made).

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::Stream;
use tokio::sync::{oneshot, watch};

use crate::proto::{
    telemetry_control, TelemetryControl, TelemetryEventFilter, TelemetrySamplingUpdate, TelemetryToggle,
};
use crate::settings::Settings;

/// `toggle(enabled: ...)`.
pub fn toggle(enabled: bool) -> TelemetryControl {
    TelemetryControl { control: Some(telemetry_control::Control::Toggle(TelemetryToggle { enabled })) }
}

/// `sampling(rate, patterns)`.
pub fn sampling(sampling_rate: f64, event_patterns: Vec<String>) -> TelemetryControl {
    let update = TelemetrySamplingUpdate { sampling_rate, event_patterns };
    TelemetryControl { control: Some(telemetry_control::Control::Sampling(update)) }
}

/// `filter(allow, deny)`.
pub fn filter(allow: Vec<String>, deny: Vec<String>) -> TelemetryControl {
    TelemetryControl {
        control: Some(telemetry_control::Control::Filter(TelemetryEventFilter { allow, deny })),
    }
}

/// The messages that put a worker in `settings`. A worker that applies sampling patterns
/// gets every rule (after the pattern-less rate, which clears its older rules); any other
/// worker gets one rate, the highest any event needs, and the NIF samples the rest.
pub fn for_settings(settings: &Settings, worker_samples_patterns: bool) -> Vec<TelemetryControl> {
    let mut messages = vec![toggle(settings.enabled)];
    if worker_samples_patterns {
        messages.push(sampling(settings.sampling_rate, Vec::new()));
        messages
            .extend(settings.sampling_rules.iter().map(|rule| sampling(rule.rate, rule.patterns.clone())));
    } else {
        messages.push(sampling(settings.rate_for_plain_worker(), Vec::new()));
    }
    messages.push(filter(settings.allow.clone(), settings.deny.clone()));
    messages
}

/// The request stream of a StreamTelemetry call: nothing until the worker's capabilities
/// are known (`samples_patterns`, from its response headers), then the current settings, then
/// the settings again after each change. It holds at most one set of messages: when the
/// worker reads slowly, intermediate settings are skipped and it still ends at the latest.
/// `excluded` (the config's `excluded_events`) is denied on top of the worker's own list.
pub fn control_stream(
    samples_patterns: oneshot::Receiver<bool>,
    settings: watch::Receiver<Arc<Settings>>,
    excluded: Arc<[String]>,
) -> impl Stream<Item = TelemetryControl> + Send + 'static {
    struct State {
        samples_patterns: Option<oneshot::Receiver<bool>>,
        capable: bool,
        settings: watch::Receiver<Arc<Settings>>,
        excluded: Arc<[String]>,
        queued: VecDeque<TelemetryControl>,
    }
    let state = State {
        samples_patterns: Some(samples_patterns),
        capable: false,
        settings,
        excluded,
        queued: VecDeque::new(),
    };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(message) = state.queued.pop_front() {
                return Some((message, state));
            }
            if let Some(capabilities) = state.samples_patterns.take() {
                // The call failed before it opened: end the request stream.
                state.capable = capabilities.await.ok()?;
            } else {
                state.settings.changed().await.ok()?;
            }
            let current = state.settings.borrow_and_update().effective(&state.excluded);
            state.queued.extend(for_settings(&current, state.capable));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::SamplingRule;
    use prost::Message;

    fn kinds(messages: &[TelemetryControl]) -> Vec<telemetry_control::Control> {
        messages
            .iter()
            .map(|m| {
                let decoded = TelemetryControl::decode(m.encode_to_vec().as_slice()).expect("round trip");
                decoded.control.expect("a control")
            })
            .collect()
    }

    #[tokio::test]
    async fn the_stream_waits_for_capabilities_then_follows_the_settings() {
        use futures_util::StreamExt;
        let (capable_tx, capable_rx) = oneshot::channel();
        let (settings_tx, settings_rx) = watch::channel(Arc::new(Settings::default()));
        let excluded: Arc<[String]> = Arc::from(vec!["python.gc.*".to_string()]);
        let mut stream = Box::pin(control_stream(capable_rx, settings_rx, excluded));
        assert!(
            futures_util::FutureExt::now_or_never(stream.next()).is_none(),
            "nothing before capabilities"
        );
        // Changed before the stream opened: the first set already has it.
        settings_tx.send_replace(Arc::new(Settings { enabled: false, ..Settings::default() }));
        capable_tx.send(true).expect("receiver alive");
        let first: Vec<_> = (0..3).map(|_| futures_util::FutureExt::now_or_never(stream.next())).collect();
        assert_eq!(
            first,
            [
                Some(Some(toggle(false))),
                Some(Some(sampling(1.0, vec![]))),
                Some(Some(filter(vec![], vec!["python.gc.*".into()]))),
            ],
            "the whole settings, with the excluded events denied"
        );
        assert!(futures_util::FutureExt::now_or_never(stream.next()).is_none(), "one set per change");
        settings_tx.send_replace(Arc::new(Settings::default()));
        assert_eq!(stream.next().await, Some(toggle(true)));
        drop(settings_tx);
        for _ in 0..2 {
            assert!(stream.next().await.is_some());
        }
        assert_eq!(stream.next().await, None, "ends with the settings");
    }

    #[test]
    fn default_settings_enable_the_worker() {
        let sent = kinds(&for_settings(&Settings::default(), true));
        assert_eq!(sent[0], telemetry_control::Control::Toggle(TelemetryToggle { enabled: true }));
        assert_eq!(
            sent[1],
            telemetry_control::Control::Sampling(TelemetrySamplingUpdate {
                sampling_rate: 1.0,
                event_patterns: vec![]
            })
        );
        assert_eq!(sent[2], telemetry_control::Control::Filter(TelemetryEventFilter::default()));
    }

    #[test]
    fn pattern_rules_only_for_workers_that_apply_them() {
        let settings = Settings {
            sampling_rate: 0.5,
            sampling_rules: vec![SamplingRule { patterns: vec!["tool.*".into()], rate: 0.9 }],
            deny: vec!["python.gc.*".into()],
            ..Settings::default()
        };
        let capable = kinds(&for_settings(&settings, true));
        assert_eq!(capable.len(), 4);
        assert_eq!(
            capable[2],
            telemetry_control::Control::Sampling(TelemetrySamplingUpdate {
                sampling_rate: 0.9,
                event_patterns: vec!["tool.*".into()]
            })
        );
        let plain = kinds(&for_settings(&settings, false));
        assert_eq!(plain.len(), 3);
        assert_eq!(
            plain[1],
            telemetry_control::Control::Sampling(TelemetrySamplingUpdate {
                sampling_rate: 0.9,
                event_patterns: vec![]
            })
        );
        assert_eq!(
            plain[2],
            telemetry_control::Control::Filter(TelemetryEventFilter {
                allow: vec![],
                deny: vec!["python.gc.*".into()]
            })
        );
    }
}
