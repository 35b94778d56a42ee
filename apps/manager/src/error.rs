//! The one error type of the REST API: a status and a JSON body of a stable shape,
//! `{"status": 404, "code": "unknown_video", "message": "..."}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fragnet_core::{FragmentIndex, NodeId, RegistryError, VideoId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What kind of error it is; stable, for programs to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request: a bad id, index, cursor or query parameter (400).
    BadRequest,
    /// Missing or wrong bearer token on a write (401).
    Unauthorized,
    /// No such route (404).
    NotFound,
    /// The node is not registered or has expired (404).
    UnknownNode,
    /// The video is not registered (404).
    UnknownVideo,
    /// The video has no such fragment (404).
    UnknownFragment,
    /// A short video id matches several videos (409); `details.matches` lists them.
    AmbiguousId,
    /// The method is not allowed on this route (405).
    MethodNotAllowed,
    /// The client took too long to send its request (408).
    Timeout,
    /// The body is larger than the limit (413).
    PayloadTooLarge,
    /// The body is not valid JSON of the expected shape, or not acceptable (422).
    Invalid,
    /// The manifest's id is not the one claimed (422).
    IdMismatch,
    /// A capacity limit is reached (507).
    Full,
    /// Something failed on the manager (500).
    Internal,
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The HTTP status, repeated.
    #[schema(minimum = 400, maximum = 599, example = 404)]
    pub status: u16,
    /// The kind of error.
    pub code: ErrorCode,
    /// What went wrong, for people.
    #[schema(example = "video 9f2c… is not registered; register its manifest first")]
    pub message: String,
    /// What the error is about, for programs (present on registry errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<ErrorDetails>,
}

/// Structured facts about an error; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetails {
    /// The node concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// The video concerned (for `id_mismatch`, the id that was claimed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoId>,
    /// The fragment index concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u32>)]
    pub index: Option<FragmentIndex>,
    /// How many fragments the video has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fragment_count: Option<u32>,
    /// For `id_mismatch`: the id the manifest really hashes to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual: Option<VideoId>,
    /// For `ambiguous_id`: the videos a short id matches (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<VideoId>,
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The code.
    pub code: ErrorCode,
    /// The message.
    pub message: String,
    /// Structured facts (boxed: errors travel in `Result`s and should stay small).
    pub details: Option<Box<ErrorDetails>>,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }

    /// 400: a malformed id, index, cursor or parameter.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
    }

    /// 422: a body that is not acceptable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Invalid,
            message,
        )
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            message,
        )
    }

    /// The code that goes with a status, for responses made outside the handlers
    /// (axum's own rejections, 404 and 405).
    pub fn code_for(status: StatusCode) -> ErrorCode {
        match status.as_u16() {
            401 => ErrorCode::Unauthorized,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            408 => ErrorCode::Timeout,
            409 => ErrorCode::AmbiguousId,
            413 => ErrorCode::PayloadTooLarge,
            422 => ErrorCode::Invalid,
            507 => ErrorCode::Full,
            500..=599 => ErrorCode::Internal,
            _ => ErrorCode::BadRequest,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            status: self.status.as_u16(),
            code: self.code,
            message: self.message.clone(),
            details: self.details.as_deref().cloned(),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let d = ErrorDetails::default();
        let (status, code, details) = match &e {
            RegistryError::UnknownNode(n) => (
                StatusCode::NOT_FOUND,
                ErrorCode::UnknownNode,
                Some(ErrorDetails {
                    node: Some(*n),
                    ..d
                }),
            ),
            RegistryError::UnknownVideo(v) => (
                StatusCode::NOT_FOUND,
                ErrorCode::UnknownVideo,
                Some(ErrorDetails {
                    video: Some(*v),
                    ..d
                }),
            ),
            RegistryError::UnknownFragment {
                video,
                index,
                count,
            } => (
                StatusCode::NOT_FOUND,
                ErrorCode::UnknownFragment,
                Some(ErrorDetails {
                    video: Some(*video),
                    index: Some(*index),
                    fragment_count: Some(*count),
                    ..d
                }),
            ),
            RegistryError::IdMismatch { claimed, actual } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorCode::IdMismatch,
                Some(ErrorDetails {
                    video: Some(*claimed),
                    actual: Some(*actual),
                    ..d
                }),
            ),
            RegistryError::Invalid(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, ErrorCode::Invalid, None)
            }
            RegistryError::Full(_) => (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::Full, None),
            RegistryError::Unauthorized(_) => {
                (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, None)
            }
            RegistryError::Unavailable(_) | RegistryError::Protocol(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, None)
            }
        };
        ApiError {
            status,
            code,
            message: e.to_string(),
            details: details.map(Box::new),
        }
    }
}

impl ErrorBody {
    /// The registry error this answer stands for (what [`crate::client::HttpRegistry`] returns).
    pub fn to_registry_error(&self) -> RegistryError {
        let d = self.details.clone().unwrap_or_default();
        let m = self.message.clone();
        match (
            self.code,
            d.node,
            d.video,
            d.index,
            d.fragment_count,
            d.actual,
        ) {
            (ErrorCode::UnknownNode, Some(n), ..) => RegistryError::UnknownNode(n),
            (ErrorCode::UnknownVideo, _, Some(v), ..) => RegistryError::UnknownVideo(v),
            (ErrorCode::UnknownFragment, _, Some(video), Some(index), Some(count), _) => {
                RegistryError::UnknownFragment {
                    video,
                    index,
                    count,
                }
            }
            (ErrorCode::IdMismatch, _, Some(claimed), _, _, Some(actual)) => {
                RegistryError::IdMismatch { claimed, actual }
            }
            (ErrorCode::Unauthorized, ..) => RegistryError::Unauthorized(m),
            (ErrorCode::Full, ..) => RegistryError::Full(
                m.strip_prefix("registry is full: ")
                    .unwrap_or(&m)
                    .to_string(),
            ),
            (
                ErrorCode::Invalid
                | ErrorCode::PayloadTooLarge
                | ErrorCode::BadRequest
                | ErrorCode::UnknownFragment,
                ..,
            ) => RegistryError::Invalid(
                m.strip_prefix("invalid request: ")
                    .unwrap_or(&m)
                    .to_string(),
            ),
            (ErrorCode::Internal | ErrorCode::Timeout, ..) => {
                RegistryError::Unavailable(format!("manager answered {}: {m}", self.status))
            }
            _ => RegistryError::Protocol(format!(
                "manager answered {} {:?}: {m}",
                self.status, self.code
            )),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, message = %self.message, "request failed");
        }
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fragnet-manager\""),
            );
        }
        resp
    }
}

/// `Result` of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
