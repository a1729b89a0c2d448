//! AWS end-to-end tests.
