//! Helpers for osk end-to-end tests: build images, boot QEMU, watch the console.
