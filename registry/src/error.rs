//! Errors as the Distribution spec's JSON body: `{"errors":[{"code","message","detail"}]}`
//! with the status code clients expect for each. The codes are oci-spec's
//! [`ErrorCode`]; the body is written here, because it always carries `detail` (`null`)
//! and a 500 says `UNKNOWN`, which the spec's list lacks (docker's registry sends it).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub use oci::ErrorCode;

/// The status a code is sent with unless a handler says otherwise.
fn default_status(code: &ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BlobUnknown
        | ErrorCode::BlobUploadUnknown
        | ErrorCode::ManifestUnknown
        | ErrorCode::NameUnknown => StatusCode::NOT_FOUND,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Denied => StatusCode::FORBIDDEN,
        ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A registry error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    /// Extra headers: `WWW-Authenticate` on 401, `Range` on 416.
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: default_status(&code),
            code,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// A storage failure: the client sees 500 without internals; the log has the detail.
    pub fn internal(context: &str, error: std::io::Error) -> ApiError {
        tracing::error!(%error, "registry storage: {context}");
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: ErrorCode::Unsupported,
            message: format!("storage error while {context}"),
            headers: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            serde_json::Value::from("UNKNOWN")
        } else {
            serde_json::to_value(&self.code).unwrap_or_default()
        };
        let body = serde_json::json!({
            "errors": [{ "code": code, "message": self.message, "detail": null }]
        });
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

impl From<std::io::Error> for ApiError {
    fn from(error: std::io::Error) -> ApiError {
        ApiError::internal("accessing storage", error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(error: ApiError) -> (StatusCode, String) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn bodies_and_statuses() {
        let mut out = Vec::new();
        for code in [
            ErrorCode::BlobUnknown,
            ErrorCode::NameInvalid,
            ErrorCode::Denied,
            ErrorCode::TooManyRequests,
        ] {
            let (status, text) = body(ApiError::new(code, "m")).await;
            out.push(format!("{} {text}", status.as_u16()));
        }
        let (status, text) = body(ApiError::internal("testing", std::io::Error::other("x"))).await;
        out.push(format!("{} {text}", status.as_u16()));
        expect_test::expect![[r#"
            404 {"errors":[{"code":"BLOB_UNKNOWN","detail":null,"message":"m"}]}
            400 {"errors":[{"code":"NAME_INVALID","detail":null,"message":"m"}]}
            403 {"errors":[{"code":"DENIED","detail":null,"message":"m"}]}
            429 {"errors":[{"code":"TOOMANYREQUESTS","detail":null,"message":"m"}]}
            500 {"errors":[{"code":"UNKNOWN","detail":null,"message":"storage error while testing"}]}"#]].assert_eq(&out.join("\n"));
    }
}
