//! The canonical records the stages after normalize read (serde JSON), on arbitrary bytes:
//! the first byte picks the record type. Beyond not panicking: a record that decodes
//! encodes again, and the encoding decodes to an equal record (what one stage writes, the
//! next reads back unchanged).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tidewatch_schema::{
    BarRecord, EnrichedTrade, FeatureRecord, OutcomeRecord, PredictionRecord, Trade,
};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(record) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let encoded = serde_json::to_vec(&record).expect("a decoded record encodes");
    let again: T = serde_json::from_slice(&encoded).expect("an encoded record decodes");
    // NaN cannot come out of JSON, so equality is the right test.
    assert_eq!(record, again);
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, payload)) = data.split_first() else {
        return;
    };
    match kind % 6 {
        0 => round_trip::<Trade>(payload),
        1 => round_trip::<EnrichedTrade>(payload),
        2 => round_trip::<BarRecord>(payload),
        3 => round_trip::<FeatureRecord>(payload),
        4 => round_trip::<PredictionRecord>(payload),
        _ => round_trip::<OutcomeRecord>(payload),
    }
});
