//! Pods as workloads (placeholder, being written).
