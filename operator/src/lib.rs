//! ssekeeper operator library.
