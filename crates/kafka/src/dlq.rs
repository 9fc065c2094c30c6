//! The one dead-letter topic: a message that cannot be decoded or fails validation goes
//! there unchanged, headers included, with headers added saying where it came from and why.

use crate::producer::Record;

pub const DLQ_TOPIC: &str = "dlq";

pub const HEADER_SOURCE_TOPIC: &str = "tidewatch.source.topic";
pub const HEADER_SOURCE_PARTITION: &str = "tidewatch.source.partition";
pub const HEADER_SOURCE_OFFSET: &str = "tidewatch.source.offset";
pub const HEADER_STAGE: &str = "tidewatch.stage";
pub const HEADER_ERROR_CODE: &str = "tidewatch.error.code";
pub const HEADER_ERROR_REASON: &str = "tidewatch.error.reason";

/// Longest reason kept in the header: reasons are for people, codes are for machines.
const MAX_REASON_LEN: usize = 512;

/// The dead letter for one input message.
pub fn dead_letter(
    stage: &str,
    input: &crate::stage::Input<'_>,
    error_code: &'static str,
    reason: &str,
) -> Record {
    let mut reason = reason.to_owned();
    if reason.len() > MAX_REASON_LEN {
        let mut cut = MAX_REASON_LEN;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    let mut record = Record::new(
        DLQ_TOPIC,
        input.key.map(<[u8]>::to_vec),
        input.payload.to_vec(),
    );
    record.headers = input
        .headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
        .collect();
    record
        .header(HEADER_SOURCE_TOPIC, input.topic)
        .header(HEADER_SOURCE_PARTITION, input.partition.to_string())
        .header(HEADER_SOURCE_OFFSET, input.offset.to_string())
        .header(HEADER_STAGE, stage)
        .header(HEADER_ERROR_CODE, error_code)
        .header(HEADER_ERROR_REASON, reason)
}
