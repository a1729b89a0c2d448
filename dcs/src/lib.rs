//! Networked Store backends (filled in by the foundation work).
