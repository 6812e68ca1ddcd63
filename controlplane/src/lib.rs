//! Ferry's compact Kubernetes-compatible control plane: `ferry-apiserver`
//! serves a real subset of the Kubernetes REST API (so kubectl and kube-rs
//! work against it) from an embedded SQLite store, and runs the controllers
//! that feed the networking dataplane.
//!
//! Every request is authenticated (`auth`: the static token file;
//! `serviceaccount`: ServiceAccount tokens, which it also issues) and
//! authorized as kube-apiserver's Node and RBAC authorizers do (`rbac`).
//!
//! This crate owns the API objects and their storage. It must not touch the
//! host network or any BPF state: nodes act on what it stores through their
//! own agents.

pub mod admission;
pub mod alloc;
pub mod api;
pub mod auth;
pub mod binding;
pub mod config;
pub mod controllers;
pub mod data_dir;
pub mod error;
pub mod limits;
pub mod managed;
pub mod object;
pub mod patch;
pub mod quantity;
pub mod rbac;
pub mod registry;
pub mod resources;
pub mod selector;
pub mod server;
pub mod serviceaccount;
pub mod storage;
pub mod store;
pub mod tls;
