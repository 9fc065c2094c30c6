//! Admin endpoints' bearer token: compared in constant time, refusals counted by reason,
//! and closed by default (no token configured means every admin request is refused).

use axum::http::{header, HeaderMap, StatusCode};
use metrics::Counter;
use secrecy::{ExposeSecret as _, SecretString};
use subtle::ConstantTimeEq as _;
use tidewatch_telemetry::catalog;

use crate::error::ApiError;

/// Why an admin request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
    NotConfigured,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 3] = [
        AuthFailure::Missing,
        AuthFailure::Invalid,
        AuthFailure::NotConfigured,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
            AuthFailure::NotConfigured => "not_configured",
        }
    }
}

impl From<AuthFailure> for ApiError {
    fn from(failure: AuthFailure) -> Self {
        match failure {
            AuthFailure::NotConfigured => ApiError::client(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                None,
                "admin endpoints are disabled: no ADMIN_TOKEN is configured",
            ),
            AuthFailure::Missing => ApiError::client(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                Some("authorization"),
                "an Authorization: Bearer <token> header is required",
            ),
            AuthFailure::Invalid => ApiError::client(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                Some("authorization"),
                "invalid admin token",
            ),
        }
    }
}

/// The configured admin token and the refusal counters.
pub struct AdminAuth {
    token: Option<SecretString>,
    failures: [Counter; 3],
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("configured", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

impl AdminAuth {
    /// Registers the refusal counters (at zero, so alerts see the series from the start).
    pub fn new(token: Option<SecretString>) -> Self {
        let failures = AuthFailure::ALL
            .map(|r| catalog::ADMIN_AUTH_FAILURES.counter(&[("reason", r.as_str())]));
        for c in &failures {
            c.absolute(0);
        }
        // An empty token would admit an empty bearer: treat it as no token.
        let token = token.filter(|t| !t.expose_secret().is_empty());
        Self { token, failures }
    }

    /// Checks a presented token in constant time; refusals are counted.
    pub fn admit(&self, presented: Option<&str>) -> Result<(), AuthFailure> {
        let verdict = match (&self.token, presented) {
            (None, _) => Err(AuthFailure::NotConfigured),
            (Some(_), None) => Err(AuthFailure::Missing),
            (Some(expected), Some(given)) => {
                if bool::from(expected.expose_secret().as_bytes().ct_eq(given.as_bytes())) {
                    Ok(())
                } else {
                    Err(AuthFailure::Invalid)
                }
            }
        };
        if let Err(reason) = verdict {
            self.failures[reason as usize].increment(1);
        }
        verdict
    }

    /// [`AdminAuth::admit`] on the request's `Authorization: Bearer` header, as an API error.
    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        self.admit(presented).map_err(ApiError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_without_a_token_and_exact_with_one() {
        let closed = AdminAuth::new(None);
        assert_eq!(closed.admit(Some("x")), Err(AuthFailure::NotConfigured));
        let empty = AdminAuth::new(Some(SecretString::from("")));
        assert_eq!(empty.admit(Some("")), Err(AuthFailure::NotConfigured));
        let auth = AdminAuth::new(Some(SecretString::from("s3cret")));
        assert_eq!(auth.admit(None), Err(AuthFailure::Missing));
        assert_eq!(auth.admit(Some("s3cre")), Err(AuthFailure::Invalid));
        assert_eq!(auth.admit(Some("s3cret!")), Err(AuthFailure::Invalid));
        assert_eq!(auth.admit(Some("s3cret")), Ok(()));
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(auth.authorize(&headers).is_ok());
        headers.insert(header::AUTHORIZATION, "Basic s3cret".parse().unwrap());
        assert!(auth.authorize(&headers).is_err());
    }
}
