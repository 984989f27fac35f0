//! init's logging: the console logger with boot markers, rotating log files, self stats.

pub mod console;
pub mod rotating;
pub mod selfstat;
pub mod sink;
