//! Envelopes in their JSON form, as backends publish them with `Content-Type:
//! application/json` and as `POST /v1/publish` receives them.
//!
//! Properties: decoding never panics; a decoded envelope writes JSON that decodes to
//! the same envelope and is written the same way again; it survives the postcard form
//! unchanged; `encode_evt_from` splices exactly that JSON into a well-formed `evt`
//! frame (`switchboard_fuzz::check_envelope`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_fuzz::check_envelope;
use switchboard_schemas::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::from_json(data) {
        check_envelope(&envelope);
    }
});
