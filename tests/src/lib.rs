//! Library parts shared by the no-root tests.
