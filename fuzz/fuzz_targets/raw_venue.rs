//! The raw venue decoder (`decode_raw`, what normalize runs on every message of
//! `trades.raw`) on arbitrary bytes. Beyond not panicking: a decoded trade has a finite,
//! positive price and size and an id naming its venue and symbol; a refusal has a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidewatch_schema::decode_raw;

fuzz_target!(|data: &[u8]| {
    match decode_raw(data, 1_700_000_000_000) {
        Ok(trade) => {
            assert!(trade.price.is_finite() && trade.price > 0.0, "{trade:?}");
            assert!(trade.size.is_finite() && trade.size > 0.0, "{trade:?}");
            assert!(
                trade.trade_id.contains(&trade.symbol),
                "the id names the symbol: {trade:?}"
            );
        }
        Err(rejection) => assert!(!rejection.reason.is_empty(), "{rejection:?}"),
    }
});
