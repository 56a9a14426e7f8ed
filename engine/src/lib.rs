//! tapnet-engine
