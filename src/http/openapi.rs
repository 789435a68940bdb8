//! The OpenAPI 3.1 document of every route (`openapi.yaml` beside this file, the one source),
//! served as JSON at `/openapi.json`. tests/openapi.rs proves it matches the router and runs
//! schemathesis against a live daemon with it.

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

const DOCUMENT: &str = include_str!("openapi.yaml");

/// The document as JSON, read once. It is part of the binary: a document that does not parse is
/// a build defect (a unit test catches it), answered as an empty object rather than a panic.
fn document() -> &'static Value {
    static PARSED: OnceLock<Value> = OnceLock::new();
    PARSED.get_or_init(|| {
        parse(DOCUMENT).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the built-in OpenAPI document does not parse");
            Value::Object(Default::default())
        })
    })
}

/// YAML to JSON. (yaml-rust2, pure Rust: libyaml's translations would embed a C library's copy.)
fn parse(text: &str) -> Result<Value, String> {
    let documents = YamlLoader::load_from_str(text).map_err(|e| e.to_string())?;
    documents.first().map(json).ok_or_else(|| "no document".to_string())
}

fn json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(text) => text.parse::<f64>().map_or(Value::Null, Value::from),
        Yaml::Integer(n) => Value::from(*n),
        Yaml::String(text) => Value::from(text.as_str()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let key = match key {
                        Yaml::String(text) => text.clone(),
                        Yaml::Integer(n) => n.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, json(value))
                })
                .collect(),
        ),
        Yaml::Null | Yaml::Alias(_) | Yaml::BadValue => Value::Null,
    }
}

pub(super) async fn serve() -> Response {
    axum::Json(document()).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_parses_as_openapi_3_1() {
        let parsed = super::parse(super::DOCUMENT).expect("openapi.yaml parses");
        assert_eq!(parsed["openapi"], "3.1.0");
        assert!(parsed["paths"].as_object().is_some_and(|p| p.len() > 10));
        // Quoted status codes stay strings, flow mappings and nulls read as JSON's.
        let created = &parsed["paths"]["/v1/verifications"]["post"]["responses"]["201"];
        assert!(created["content"]["application/json"]["schema"]["$ref"].is_string(), "{created}");
        let encoding = &parsed["components"]["schemas"]["Message"]["properties"]["encoding"]["enum"];
        assert_eq!(encoding, &serde_json::json!(["gsm7", "ucs2", null]));
    }
}
