//! PostgreSQL clusters on loopback (owned by the node-agent work).
