//! What goes wrong supervising a service; every variant names the service.

use std::path::PathBuf;

use crate::bundle::prepare::HostActionError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no service named {service:?} (see `oskctl ps`)")]
    Unknown { service: String },
    #[error("{service}: supervisor gone")]
    Gone { service: String },
    #[error("{service}: cannot create its log FIFOs in {}: {cause}", dir.display())]
    Fifos {
        service: String,
        dir: PathBuf,
        #[source]
        cause: std::io::Error,
    },
    #[error("{}: {cause}", path.display())]
    ReadSpec {
        service: String,
        path: PathBuf,
        #[source]
        cause: std::io::Error,
    },
    #[error("{}: invalid OCI spec: {cause}", path.display())]
    Spec {
        service: String,
        path: PathBuf,
        #[source]
        cause: serde_json::Error,
    },
    /// runtime.json's host side failed (its error names the service).
    #[error("{cause}")]
    Prepare {
        service: String,
        #[source]
        cause: HostActionError,
    },
    /// containerd refused or is gone (its error names the service).
    #[error("{cause}")]
    Runtime {
        service: String,
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    /// The service the error is about.
    pub fn service(&self) -> &str {
        match self {
            Error::Unknown { service }
            | Error::Gone { service }
            | Error::Fifos { service, .. }
            | Error::ReadSpec { service, .. }
            | Error::Spec { service, .. }
            | Error::Prepare { service, .. }
            | Error::Runtime { service, .. } => service,
        }
    }
}
