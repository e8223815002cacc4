//! The root tests of hostgw live in `tests/`: each file is a scenario in throwaway network
//! namespaces, built on `hostgw-harness`. This library is empty on purpose (Cargo needs a
//! target besides the tests).
#![forbid(unsafe_code)]
