//! Schema validation errors.

/// A read or write that did not match its schema, or an unreadable file.
/// Every variant names the artifact (its path in the run) and the field.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{artifact}: column '{field}' is missing (expected {expected})")]
    MissingColumn {
        artifact: String,
        field: String,
        expected: String,
    },
    #[error("{artifact}: column '{field}' has type {found}, expected {expected}")]
    WrongType {
        artifact: String,
        field: String,
        expected: String,
        found: String,
    },
    #[error("{artifact}: column '{field}' has null values but is not nullable")]
    UnexpectedNull { artifact: String, field: String },
    #[error("{artifact}: tensor '{tensor}' is missing (expected {expected})")]
    MissingTensor {
        artifact: String,
        tensor: String,
        expected: String,
    },
    #[error("{artifact}: tensor '{tensor}' is not in the layout '{layout}'")]
    UnexpectedTensor {
        artifact: String,
        tensor: String,
        layout: String,
    },
    #[error("{artifact}: tensor '{tensor}' has dtype {found}, expected {expected}")]
    WrongDType {
        artifact: String,
        tensor: String,
        expected: String,
        found: String,
    },
    #[error("{artifact}: tensor '{tensor}' has shape {found:?}, expected {expected}")]
    WrongShape {
        artifact: String,
        tensor: String,
        expected: String,
        found: Vec<usize>,
    },
    #[error("{artifact}: dimension '{dim}' of the layout is not bound by the caller")]
    UnboundDim { artifact: String, dim: String },
    #[error("{artifact}: not a readable Parquet file (truncated or corrupted?): {reason}")]
    BadParquet { artifact: String, reason: String },
    #[error("{artifact}: not a readable safetensors file (truncated or corrupted?): {reason}")]
    BadSafetensors { artifact: String, reason: String },
    #[error("{artifact}: {reason}")]
    Invalid { artifact: String, reason: String },
}
