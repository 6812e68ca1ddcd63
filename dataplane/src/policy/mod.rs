//! NetworkPolicy's user-space half: the API objects reduced to what policy
//! needs ([`model`], [`selector`]), the cluster's state with identities
//! kept stable between compilations ([`state`], [`identity`]), the compiler
//! to the exact contents of the policy maps of `ferry_ebpf_common::policy`
//! ([`compile`]), and two ways of deciding a verdict used to check the
//! compiler: a simulator of the datapath's lookups over compiled maps
//! ([`simulate`]) and a naive evaluator of the API's semantics over the
//! model ([`reference`]).
//!
//! The agent's side: [`enforcer`] watches the objects and recompiles after
//! changes, and [`programmer`] writes the result into the maps, changed
//! entries only, in an order that never opens a window. The translation
//! modules must not touch BPF maps, the kernel or the Kubernetes API; only
//! those two do.

pub mod compile;
pub mod enforcer;
pub mod identity;
pub mod model;
pub mod programmer;
pub mod reference;
pub mod selector;
pub mod simulate;
pub mod state;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod property_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod scale_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod semantics_tests;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod testkit;

pub use compile::{Desired, PolicyName, PolicyProblem, ProblemKind};
pub use model::{ModelError, PolicyLimits};
pub use state::{Limits, PolicyState};
