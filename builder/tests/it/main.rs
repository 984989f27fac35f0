//! osk-builder's integration tests, in one binary.
//!
//! Each file under `tests/` used to be its own test binary, and each of those
//! links every dependency again: thirteen of them filled a CI machine's disk.
//! One binary links once.

mod support;

mod assemble_layers;
mod build_cli;
mod build_images;
mod build_outputs;
mod build_rpi;
mod cache_trust;
mod pkg_build;
mod pkg_from_image;
mod pkg_release;
mod pkg_resolve;
mod pkg_signature;
mod pull_registry;
mod spec_golden;
mod store_skopeo;
mod volume_oci;
