//! The error of this crate.
//!
//! Contract: every fallible function here returns [`Error`]; its message is complete
//! (what is wrong, and what to give instead) and is shown to the user as is. It
//! depends on nothing: users wrap it (the engine maps it to its `InvalidRequest`,
//! HTTP 400).

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The value is malformed or out of range (a driver option, a port binding).
    #[error("{0}")]
    Invalid(String),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
