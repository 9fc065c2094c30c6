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
pub const HEADER_ERROR_CAUSE: &str = "tidewatch.error.cause";

/// Whose fault a dead letter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The producer sent something the pipeline must refuse: a record that fails
    /// validation, names an unknown symbol, or arrives after its window closed. Refusing
    /// it is correct behaviour, not lost data.
    Input,
    /// A record the pipeline should have handled and did not: one stage emitted what the
    /// next cannot read, or an output could not be encoded. Lost data (the
    /// `data_completeness` SLO counts these).
    Pipeline,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Input => "input",
            Cause::Pipeline => "pipeline",
        }
    }
}

/// A bounded dead-letter code (a metric label and a header) with its cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code {
    pub name: &'static str,
    pub cause: Cause,
}

impl Code {
    pub const fn input(name: &'static str) -> Self {
        Self {
            name,
            cause: Cause::Input,
        }
    }

    pub const fn pipeline(name: &'static str) -> Self {
        Self {
            name,
            cause: Cause::Pipeline,
        }
    }
}

/// An output the stage could not serialise.
pub const ENCODE_FAILED: Code = Code::pipeline("encode_failed");

/// Longest reason kept in the header: reasons are for people, codes are for machines.
const MAX_REASON_LEN: usize = 512;

/// The dead letter for one input message.
pub fn dead_letter(
    stage: &str,
    input: &crate::stage::Input<'_>,
    code: Code,
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
        .header(HEADER_ERROR_CODE, code.name)
        .header(HEADER_ERROR_CAUSE, code.cause.as_str())
        .header(HEADER_ERROR_REASON, reason)
}
