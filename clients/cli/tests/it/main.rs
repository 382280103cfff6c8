//! grantmesh's integration tests, in one test binary that links once.
//!
//! Every test talks to real servers on loopback sockets — started in this
//! process through `grantmesh_node` or as child processes of the real
//! binary — and to a real PostgreSQL (`scripts/postgres`), each domain test
//! on a fresh database. [`support`] holds the one sandbox they all use.

mod balancing;
mod ca;
mod cli;
mod dev;
mod email;
mod fairness;
mod grants;
mod issuer;
mod mesh;
mod newcomer;
mod outside_clients;
mod overload;
mod partition;
mod readme;
mod registry_watch;
mod scripts;
mod security;
mod sessions;
mod simulate;
mod store_failures;
mod support;
mod web;
