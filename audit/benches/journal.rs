//! Journal throughput benchmark (being written).
fn main() {}
