//! Image references as Docker and LinuxKit users write them.
