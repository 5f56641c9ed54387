//! Control messages the NIF sends to a worker on its stream.

use crate::proto::{telemetry_control, TelemetryControl, TelemetryToggle};

/// `toggle(enabled: ...)`.
pub fn toggle(enabled: bool) -> TelemetryControl {
    TelemetryControl { control: Some(telemetry_control::Control::Toggle(TelemetryToggle { enabled })) }
}

/// What a stream sends as soon as it opens, before any event arrives.
pub fn on_open() -> Vec<TelemetryControl> {
    vec![toggle(true)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn opening_enables_the_worker() {
        let sent = on_open();
        assert_eq!(sent.len(), 1);
        let bytes = sent[0].encode_to_vec();
        let decoded = TelemetryControl::decode(bytes.as_slice()).expect("round trip");
        assert_eq!(decoded.control, Some(telemetry_control::Control::Toggle(TelemetryToggle { enabled: true })));
    }
}
