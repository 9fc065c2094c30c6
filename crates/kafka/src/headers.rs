//! A consumed message's headers, read without trusting their names.
//!
//! Kafka header names are bytes on the wire and brokers store them as they get them, so a
//! producer writing raw bytes can send a name that is not UTF-8. rdkafka 0.39 turns every
//! name into `&str` with `CStr::to_str().unwrap()`: such a message would panic every stage
//! that reads it, again on every replay, and stop the pipeline behind it (a poison pill).
//! The workspace forbids `unsafe`, so the name cannot be read past rdkafka; each header is
//! read under [`std::panic::catch_unwind`] instead, with the default panic message held
//! back for that read only. A header whose name is not UTF-8 is left out and counted
//! (`tidewatch_kafka_unreadable_headers_total`); the message itself is processed as usual,
//! since no header Tidewatch reads or forwards has such a name.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use rdkafka::message::{BorrowedHeaders, Headers as _};
use tidewatch_telemetry::catalog;

thread_local! {
    /// Set while this thread reads a header: a panic then is rdkafka's, and expected.
    static READING: Cell<bool> = const { Cell::new(false) };
}

/// Installs, once per process, a panic hook that stays silent for a panic raised while a
/// header is read and hands every other panic to the hook that was there before.
fn hold_back_header_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !READING.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// The readable headers of a message, in order (a header without a value reads as an
/// empty one), and how many were left out because their names are not UTF-8.
pub fn read(headers: Option<&BorrowedHeaders>) -> (Vec<(&str, &[u8])>, usize) {
    let Some(headers) = headers else {
        return (Vec::new(), 0);
    };
    hold_back_header_panics();
    let count = headers.count();
    let mut readable = Vec::with_capacity(count);
    let mut unreadable = 0;
    READING.with(|r| r.set(true));
    for idx in 0..count {
        // Unwind safety: `try_get` only reads the message; a panic leaves nothing changed.
        match panic::catch_unwind(AssertUnwindSafe(|| headers.try_get(idx))) {
            Ok(Some(h)) => readable.push((h.key, h.value.unwrap_or_default())),
            Ok(None) => break,
            Err(_) => unreadable += 1,
        }
    }
    READING.with(|r| r.set(false));
    if unreadable > 0 {
        catalog::KAFKA_UNREADABLE_HEADERS
            .counter(&[])
            .increment(unreadable as u64);
    }
    (readable, unreadable)
}
