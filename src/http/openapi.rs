//! The OpenAPI 3.1 document of every route (`openapi.yaml` beside this file, the one source),
//! served as JSON at `/openapi.json`. tests/openapi.rs proves it matches the router and runs
//! schemathesis against a live daemon with it.

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};

const DOCUMENT: &str = include_str!("openapi.yaml");

/// The document as JSON, read once. It is part of the binary: a document that does not parse is
/// a build defect (a unit test catches it), answered as an empty object rather than a panic.
fn document() -> &'static serde_json::Value {
    static PARSED: OnceLock<serde_json::Value> = OnceLock::new();
    PARSED.get_or_init(|| {
        serde_yaml_ng::from_str(DOCUMENT).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the built-in OpenAPI document does not parse");
            serde_json::Value::Object(Default::default())
        })
    })
}

pub(super) async fn serve() -> Response {
    axum::Json(document()).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_parses_as_openapi_3_1() {
        let parsed: serde_json::Value = serde_yaml_ng::from_str(super::DOCUMENT).expect("openapi.yaml parses");
        assert_eq!(parsed["openapi"], "3.1.0");
        assert!(parsed["paths"].as_object().is_some_and(|p| p.len() > 10));
    }
}
