//! Integration tests of `ferry-cni` in network namespaces (root only; each
//! test skips with a message otherwise). See `common` for the world they
//! build and how it is cleaned up.

mod common;

mod chain;
mod errors;
mod hardening;
mod ipam;
mod lifecycle;
