//! Harness for root tests: throwaway network namespaces, a real etcd, the built binaries.
