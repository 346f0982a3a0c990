//! The tokio shell (filled in below).
