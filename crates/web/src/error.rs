//! The API's error type: every client mistake is a 4xx with a JSON body naming the field;
//! a server fault is a 500 that shows no internals (they go to the log).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use tidewatch_telemetry::catalog;

/// `{"error": {...}}`, the body of every error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `invalid_value`.
    pub code: &'static str,
    /// A sentence for humans.
    pub message: String,
    /// The offending field as a path (`features.vol_5m`, `items[3].symbol`), `body` for the
    /// request body as a whole, a header name, or null when no field is at fault.
    pub field: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client's fault: answered with `status` and the detail.
    #[error("{}", .detail.message)]
    Client {
        status: StatusCode,
        detail: ErrorDetail,
    },
    /// Ours: logged in full, answered with a bare 500.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl ApiError {
    pub fn client(
        status: StatusCode,
        code: &'static str,
        field: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        ApiError::Client {
            status,
            detail: ErrorDetail {
                code,
                message: message.into(),
                field: field.map(str::to_owned),
            },
        }
    }

    /// 422 for a well-formed request whose `field` has an unacceptable value.
    pub fn invalid(field: &str, code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNPROCESSABLE_ENTITY, code, Some(field), message)
    }

    pub fn not_found() -> Self {
        Self::client(StatusCode::NOT_FOUND, "not_found", None, "no such endpoint")
    }

    pub fn method_not_allowed() -> Self {
        Self::client(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            None,
            "method not allowed on this endpoint",
        )
    }
}

/// A 5xx answered, by the code of its body: HighErrorRate says how many, this says which.
fn count_server_error(code: &'static str) {
    catalog::HTTP_SERVER_ERRORS
        .counter(&[("error_type", code)])
        .increment(1);
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Client { status, detail } => {
                if status.is_server_error() {
                    count_server_error(detail.code);
                }
                let mut response = (status, Json(ErrorBody { error: detail })).into_response();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    // The rest of an oversized body is not read: the connection cannot carry
                    // another request.
                    response.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                }
                response
            }
            ApiError::Unexpected(e) => {
                tracing::error!(error = format!("{e:#}"), "request failed unexpectedly");
                count_server_error("internal");
                let detail = ErrorDetail {
                    code: "internal",
                    message: "internal server error".into(),
                    field: None,
                };
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(ErrorBody { error: detail }),
                )
                    .into_response()
            }
        }
    }
}
