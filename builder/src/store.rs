//! The local OCI image-layout store.
