//! Generated gRPC API (work in progress).
