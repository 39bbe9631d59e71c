//! Test support for seamless: a simulated machine for the TSM, and [`driver`], which calls the
//! TSM's ABIs exactly as the firmware does and builds fixtures only through ABI calls.
//!
//! [`arena`] provides [`HostMem`], a lazily zeroed physical memory arena, and [`HostPlatform`],
//! which implements the TSM's platform traits over it with a seeded (test-only) entropy source,
//! a monotonic clock and a call log. Spec tests, model tests and benchmarks all run the shipped
//! TSM code over it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod arena;
pub mod assign;
pub mod audit;
pub mod driver;
pub mod hostmap;
pub mod unchanged;
pub mod unit;

pub use arena::*;
