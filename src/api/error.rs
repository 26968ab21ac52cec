//! What can go wrong talking to the API, and what an HTTP status means.

use std::time::Duration;

use reqwest::StatusCode;

/// Everything that can go wrong talking to the API. Bodies are shown, never parsed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "the API rejected the token (401 Unauthorized); check api.token_file or AGENT_API__TOKEN"
    )]
    Unauthorized,
    #[error("{what}: not found (404): {body}")]
    NotFound { what: String, body: String },
    #[error("the API refused {what} (400 Bad Request): {body}")]
    BadRequest { what: String, body: String },
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    #[error("{what}: rate limited (429) after {}", tries(*.attempts))]
    RateLimited {
        what: String,
        attempts: u32,
        retry_after: Option<Duration>,
    },
    #[error("{what}: server error {status} after {}: {body}", tries(*.attempts))]
    Server {
        what: String,
        status: u16,
        attempts: u32,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("{what}: {kind} after {}", tries(*.attempts))]
    Transport {
        what: String,
        kind: String,
        attempts: u32,
    },
    #[error("{what}: malformed response: {detail}")]
    Decode { what: String, detail: String },
    /// The request may or may not have been carried out (a create or restore whose
    /// response was lost). The caller must find out before trying again.
    #[error("{what}: outcome unknown ({reason})")]
    OutcomeUnknown { what: String, reason: String },
}

impl ApiError {
    /// Worth sending the same request again at once (the retry policy asks). Errors that
    /// mean "may have been carried out" for a request that must not be repeated arrive as
    /// [`ApiError::OutcomeUnknown`], which is final here.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::RateLimited { .. }
                | Self::Server { .. }
                | Self::Transport { .. }
                | Self::Decode { .. }
        )
    }

    /// Worth trying again later, by a later poll or run: the API or the network, not the
    /// request, was at fault. A retryable failure other than a malformed answer (which a
    /// retry may cure, but which says the API is not what the agent expects), and an
    /// outcome that is unknown (the next run finds out).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Decode { .. } => false,
            Self::OutcomeUnknown { .. } => true,
            e => e.is_retryable(),
        }
    }

    /// How long the API asked us to wait before the next attempt, if it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::Server { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The API answered but did not carry the request out: a 503 says so outright, and
    /// a 429 is refused before any work. Any other 5xx may follow the work.
    pub fn not_handled(&self) -> bool {
        match self {
            Self::RateLimited { .. } => true,
            Self::Server { status, .. } => *status == StatusCode::SERVICE_UNAVAILABLE.as_u16(),
            _ => false,
        }
    }
}

/// "1 attempt", "3 attempts".
fn tries(n: u32) -> String {
    if n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

/// The error an unsuccessful answer stands for. `attempts` counts this one.
pub(super) fn classify(
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
    what: &str,
    attempts: u32,
) -> ApiError {
    let what = what.to_string();
    let body = excerpt(body);
    match status {
        StatusCode::UNAUTHORIZED => ApiError::Unauthorized,
        StatusCode::NOT_FOUND => ApiError::NotFound { what, body },
        StatusCode::BAD_REQUEST => ApiError::BadRequest { what, body },
        StatusCode::TOO_MANY_REQUESTS => ApiError::RateLimited {
            what,
            attempts,
            retry_after,
        },
        s if s.is_server_error() => ApiError::Server {
            what,
            status: s.as_u16(),
            attempts,
            body,
            retry_after,
        },
        s => ApiError::Status {
            what,
            status: s.as_u16(),
            body,
        },
    }
}

/// The start of a body, for error messages.
pub(super) fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    let mut cut: String = text.chars().take(300).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_counted_in_words() {
        let e = classify(StatusCode::BAD_GATEWAY, b"down", None, "list", 1);
        assert!(e.to_string().contains("after 1 attempt: "), "{e}");
        let e = classify(StatusCode::BAD_GATEWAY, b"down", None, "list", 6);
        assert!(e.to_string().contains("after 6 attempts: "), "{e}");
    }
}
