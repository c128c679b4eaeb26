//! Envelopes in their postcard form, as Rust processes store them in JetStream and the
//! edge reads them back for replay and live delivery.
//!
//! Properties: decoding never panics, whatever the version byte, lengths and varints
//! say; a decoded envelope writes postcard that decodes to the same envelope and is
//! written the same way again, and survives the JSON form unchanged
//! (`switchboard_fuzz::check_envelope`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_fuzz::check_envelope;
use switchboard_schemas::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::from_postcard(data) {
        check_envelope(&envelope);
    }
});
