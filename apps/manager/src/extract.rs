//! Request input: bodies read with a size limit and a timeout, JSON parsed into the
//! API's error shape (413, 408, 422), ids and indices from paths parsed into 400s.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use fragnet_core::{FragmentIndex, IdPrefix, NodeId, VideoId};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// Reads a whole body, refusing more than `limit` bytes (413) or a client slower than
/// the request timeout (408).
pub async fn read_body(state: &AppState, req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("request body is larger than {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body: Body = req.into_body();
    match tokio::time::timeout(state.request_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::Timeout,
            "the request body did not arrive in time",
        )),
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e)) => {
            let inner = e.into_inner();
            if inner
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(too_large())
            } else {
                Err(ApiError::bad_request(format!(
                    "reading the request body: {inner}"
                )))
            }
        }
    }
}

/// A JSON body of at most `limits.max_body_bytes`. Content-Type is not required
/// (`curl -d` sends a form type); the bytes must be JSON of the expected shape (422).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(state, req, state.limits.max_body_bytes).await?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::invalid(format!(
                "request body is not valid JSON of the expected shape: {e}"
            ))
        })
    }
}

/// Parses a video id from a path segment (400 when malformed).
pub fn video_id(s: &str) -> Result<VideoId, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{:?} is not a video id (64 lowercase hex characters)",
            clip(s)
        ))
    })
}

/// The OpenAPI schema of a `{id}` path segment that [`registered_video`] reads: a full
/// video id or a prefix of at least 8 hex digits. (The server also takes the `…` that
/// fragnet prints after a short id; the schema leaves it out.)
pub struct VideoIdOrPrefix;

impl utoipa::PartialSchema for VideoIdOrPrefix {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[0-9a-f]{8,64}$"))
            .min_length(Some(8))
            .max_length(Some(64))
            .description(Some(
                "A video id (64 lowercase hex characters) or a unique prefix of it (at least 8).",
            ))
            .examples(["9f2c1b3a"])
            .into()
    }
}

impl utoipa::ToSchema for VideoIdOrPrefix {}

/// Matches listed when a short id is ambiguous.
const MAX_MATCHES: usize = 10;

/// The registered video a path segment names: a full id, or a unique prefix of at
/// least 8 hex digits (400 when malformed or too short, 404 when no video matches, 409
/// listing the matches when several do).
pub fn registered_video(state: &AppState, s: &str) -> Result<VideoId, ApiError> {
    if s.len() == 64 {
        return video_id(s);
    }
    let prefix = IdPrefix::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let found = state.registry.videos_with_prefix(&prefix, MAX_MATCHES);
    match found.as_slice() {
        [] => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::UnknownVideo,
            format!("no registered video id starts with {}", prefix.as_str()),
        )),
        [one] => Ok(*one),
        many => {
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                ErrorCode::AmbiguousId,
                format!(
                    "{} matches {} videos; give more of the id: {}",
                    prefix.as_str(),
                    many.len(),
                    many.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            e.details = Some(Box::new(crate::error::ErrorDetails {
                matches: many.to_vec(),
                ..Default::default()
            }));
            Err(e)
        }
    }
}

/// Parses a node id from a path segment (400 when malformed).
pub fn node_id(s: &str) -> Result<NodeId, ApiError> {
    s.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "{:?} is not a node id (64 lowercase hex characters)",
            clip(s)
        ))
    })
}

/// Parses a fragment index from a path segment (400 when malformed).
pub fn fragment_index(s: &str) -> Result<FragmentIndex, ApiError> {
    let ok = !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.parse().ok()).flatten().ok_or_else(|| {
        ApiError::bad_request(format!(
            "{:?} is not a fragment index (0 to 4294967295)",
            clip(s)
        ))
    })
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Query parameters, with axum's rejection turned into the API's 400.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(q) => Ok(ApiQuery(q.0)),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments() {
        assert_eq!(fragment_index("7").unwrap(), 7);
        assert_eq!(fragment_index("4294967295").unwrap(), u32::MAX);
        for bad in ["", "-1", "+1", "4294967296", "1.0", "x", "99999999999"] {
            let e = fragment_index(bad).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(video_id(&"a".repeat(64)).is_ok());
        assert_eq!(video_id("A").unwrap_err().code, ErrorCode::BadRequest);
        assert!(
            node_id(&"é".repeat(1000)).unwrap_err().message.len() < 300,
            "clipped"
        );
    }
}
