//! A pod's cgroup (placeholder, being written).
