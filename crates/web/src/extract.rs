//! `JsonBody<T>`: a JSON extractor whose rejections are [`ApiError`]s naming the field.
//!
//! axum's own `Json` answers in plain text and cannot say which field was wrong, so this
//! one checks the content type (415), reads the body under the configured limit (413),
//! tells syntax errors (400) from type errors (422) and reports the failing path, e.g.
//! `features.vol_5m`, using serde_path_to_error.
//!
//! A body over the limit is read to its end and thrown away (up to [`DISCARD_LIMIT_BYTES`],
//! for at most [`DISCARD_TIMEOUT`]) before the 413 goes out with `Connection: close`: many
//! clients (Python's urllib, for one) send the whole body before they read anything, and an
//! answer sent while they still write reaches them as a broken pipe, not as the 413.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::error::ApiError;

/// The most of an oversized body read (and discarded) so that its sender sees the 413;
/// beyond it the connection is closed unread.
pub const DISCARD_LIMIT_BYTES: u64 = 16 * 1024 * 1024;
/// The longest an oversized body is read for before the 413 is sent anyway.
pub const DISCARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Router state that knows how large a request body may be.
pub trait BodyLimit {
    fn max_body_bytes(&self) -> usize;
}

#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: BodyLimit + Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_json_body(req, state.max_body_bytes()).await?;
        parse(&bytes).map(JsonBody)
    }
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn read_json_body(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !is_json(content_type) {
        return Err(ApiError::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            Some("content-type"),
            format!(
                "expected Content-Type: application/json, got {:?}",
                content_type
            ),
        ));
    }
    let too_large = || {
        ApiError::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            Some("body"),
            format!("request body exceeds {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let mut body = req.into_body();
    if let Some(declared) = declared.filter(|&n| n > limit as u64) {
        if declared <= DISCARD_LIMIT_BYTES {
            discard(body, 0).await;
        }
        return Err(too_large());
    }
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(ApiError::client(
                StatusCode::BAD_REQUEST,
                "unreadable_body",
                Some("body"),
                "the request body could not be read",
            ));
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        if buf.len() + data.len() > limit {
            discard(body, (buf.len() + data.len()) as u64).await;
            return Err(too_large());
        }
        buf.extend_from_slice(&data);
    }
    Ok(Bytes::from(buf))
}

/// Reads what is left of `body` (of which `seen` bytes were read already) and drops it,
/// within [`DISCARD_LIMIT_BYTES`] and [`DISCARD_TIMEOUT`].
async fn discard(mut body: Body, mut seen: u64) {
    let drain = async {
        while seen <= DISCARD_LIMIT_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len() as u64),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_TIMEOUT, drain).await;
}

/// For `#[serde(default, deserialize_with = "whole_number")]` on an `Option<u64>` field: a
/// JSON number without a fractional part, written `55` or `55.0` (JSON Schema's `integer`
/// takes both, so a client generated from the document may send either); null or absent is
/// `None`.
pub fn whole_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error as _;
    use serde::Deserialize as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    match n.as_f64() {
        // 2^64 is exactly representable; every whole f64 below it fits a u64.
        Some(f) if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) => {
            Ok(Some(f as u64))
        }
        _ => Err(D::Error::custom(format!(
            "invalid value: {n}, expected a non-negative whole number"
        ))),
    }
}

/// Parses JSON into `T`, naming the failing path in the error.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would accept a JSON array for a struct, positionally; requests are objects.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::invalid(
            "body",
            "invalid_type",
            "the request body must be a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            None
        } else {
            Some(path)
        };
        from_serde_error(e.inner(), field)
    })?;
    // Trailing characters after the JSON value are malformed input, not ignorable.
    de.end().map_err(|e| from_serde_error(&e, None))?;
    Ok(value)
}

/// Converts a value-level deserialisation failure (e.g. one batch item) into an error.
pub fn from_value<T: DeserializeOwned>(
    value: serde_json::Value,
    prefix: &str,
) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::invalid(
            prefix,
            "invalid_type",
            format!("{prefix} must be a JSON object"),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{path}")
        };
        from_serde_error(e.inner(), Some(field))
    })
}

fn from_serde_error(e: &serde_json::Error, field: Option<String>) -> ApiError {
    let message = e.to_string();
    match e.classify() {
        Category::Data => {
            ApiError::invalid(field.as_deref().unwrap_or("body"), "invalid_type", message)
        }
        // serde_json reports numbers that overflow f64 (1e400) as syntax errors, but the JSON
        // is well formed and the value is what is wrong.
        Category::Syntax if message.starts_with("number out of range") && field.is_some() => {
            ApiError::invalid(
                field.as_deref().unwrap_or("body"),
                "invalid_value",
                "number is not finite",
            )
        }
        // The path of a syntax error is wherever the parser gave up, not a field at fault.
        Category::Syntax | Category::Eof | Category::Io => ApiError::client(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            Some("body"),
            format!("malformed JSON: {message}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_suffixes_count_as_json() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/problem+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }

    #[derive(Debug, serde::Deserialize)]
    struct Rate {
        #[serde(default, deserialize_with = "whole_number")]
        n: Option<u64>,
    }

    #[test]
    fn whole_numbers_are_taken_as_json_schema_integers() {
        let n = |body: &str| parse::<Rate>(body.as_bytes()).map(|r| r.n);
        assert_eq!(n(r#"{"n": 55}"#).ok(), Some(Some(55)));
        assert_eq!(n(r#"{"n": 55.0}"#).ok(), Some(Some(55)));
        assert_eq!(n(r#"{"n": 1e3}"#).ok(), Some(Some(1000)));
        assert_eq!(n(r#"{"n": null}"#).ok(), Some(None));
        assert_eq!(n("{}").ok(), Some(None));
        for refused in [
            r#"{"n": 55.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": 1e30}"#,
            r#"{"n": "5"}"#,
        ] {
            let Err(ApiError::Client { detail, .. }) = n(refused) else {
                panic!("{refused} was taken");
            };
            assert_eq!(detail.field.as_deref(), Some("n"), "{refused}");
        }
    }
}
