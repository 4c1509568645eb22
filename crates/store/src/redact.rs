//! Credential redaction for messages that leave the process.
//!
//! The storage backends read their credentials from the environment (the
//! standard `AWS_*`, `GOOGLE_*`, `AZURE_*` variables). Any message that may
//! echo a request or a response passes through [`redact`], which replaces the
//! value of every such secret found in the text with `***`.

/// Environment variables whose values are secrets (or identify a secret).
const SECRET_VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET",
];

/// Replace every credential value from the environment found in `text` by `***`.
///
/// Values shorter than four characters are not replaced (they would mangle
/// ordinary text and are not real credentials).
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    for var in SECRET_VARS {
        if let Ok(value) = std::env::var(var) {
            let value = value.trim();
            if value.len() >= 4 {
                out = out.replace(value, "***");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_from_environment_is_replaced() {
        // SAFETY: single-threaded use of a variable no other test reads.
        unsafe { std::env::set_var("AZURE_CLIENT_SECRET", "s3cr3t-value-xyz") };
        let msg = redact("request failed: signature s3cr3t-value-xyz mismatch");
        assert_eq!(msg, "request failed: signature *** mismatch");
        assert!(!msg.contains("s3cr3t"));
    }
}
