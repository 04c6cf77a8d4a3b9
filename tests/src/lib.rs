//! End-to-end tests live in `tests/`; the binaries in `src/bin` are the load
//! tools `deploy/bench` runs and the fake provider of the failure drills
//! (`deploy/drills`).
