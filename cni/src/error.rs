//! CNI errors: the spec's error result (`{"cniVersion", "code", "msg", "details"}`)
//! and the codes tapnet-cni uses.
//!
//! Contract: every failure of the plugin is one [`CniError`]; `main` prints it on
//! stdout as the spec's error structure (and on stderr for humans) and exits 1.
//! `msg` is a short characterisation, `details` the full explanation (the daemon's
//! own message is kept there verbatim).

use serde::Serialize;

/// 1: the configuration's `cniVersion` is not one this plugin speaks.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// 2: a configuration field this plugin does not support (the message names it
/// with its value).
pub const UNSUPPORTED_FIELD: u32 = 2;
/// 3: the container (its network namespace) does not exist.
pub const UNKNOWN_CONTAINER: u32 = 3;
/// 4: a missing or invalid `CNI_*` environment variable (named in the message).
pub const INVALID_ENV: u32 = 4;
/// 5: reading stdin failed.
pub const IO_FAILURE: u32 = 5;
/// 6: stdin is not a decodable configuration.
pub const DECODE: u32 = 6;
/// 7: the configuration is invalid (including: the tapnet network it names does
/// not exist, or tapnetd refused a value it carries).
pub const INVALID_CONFIG: u32 = 7;
/// 11: a transient condition (tapnetd unreachable, no free address, store down).
pub const TRY_AGAIN: u32 = 11;
/// 50 (STATUS): the plugin cannot serve ADD (the tapnet network does not exist).
pub const NOT_AVAILABLE: u32 = 50;
/// 51 (STATUS): tapnetd is unreachable: ADD cannot be served and, since tapnet's
/// datapath runs inside tapnetd, existing attachments have no connectivity.
pub const NOT_AVAILABLE_DEGRADED: u32 = 51;
/// 100 (tapnet-specific, CHECK): the attachment is not as recorded (sandbox,
/// endpoint, interface, MAC or address missing or different).
pub const ATTACHMENT_MISMATCH: u32 = 100;
/// 999: anything else (an unexpected daemon answer, an OS call that failed).
pub const OTHER: u32 = 999;

/// One plugin failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The CNI error code.
    pub code: u32,
    /// Short characterisation.
    pub msg: String,
    /// Full explanation.
    pub details: String,
}

impl CniError {
    /// A new error.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The spec's error result for protocol version `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a> {
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            details: &'a str,
        }
        serde_json::to_value(Out {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or(serde_json::Value::Null)
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {}): {}", self.msg, self.code, self.details)
    }
}

impl std::error::Error for CniError {}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, CniError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_result_has_the_spec_keys() {
        let e = CniError::new(7, "Invalid Configuration", "network x not found");
        assert_eq!(
            e.to_json("1.1.0"),
            serde_json::json!({"cniVersion": "1.1.0", "code": 7,
                "msg": "Invalid Configuration", "details": "network x not found"})
        );
    }
}
