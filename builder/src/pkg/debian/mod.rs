//! The Debian archive client: apt sources, the signed Release, indexes, versions, resolution, downloads, `.deb`s.

pub mod apt_source;
pub mod deb;
pub mod fetch;
pub mod index;
pub mod release;
pub mod resolve;
pub mod version;

use super::Error;
