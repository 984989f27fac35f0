//! The signals that ask PID 1 to power off (SIGTERM, SIGUSR2, SIGPWR) or
//! reboot (SIGINT, which Ctrl-Alt-Del sends once routed to init).

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::sys::{PowerAction, Signal};

/// Forwards each of those signals to `tx` as its action, for good.
pub fn watch(tx: &mpsc::UnboundedSender<PowerAction>) {
    for (kind, action) in [
        (SignalKind::terminate(), PowerAction::PowerOff),
        (SignalKind::user_defined2(), PowerAction::PowerOff),
        (
            SignalKind::from_raw(Signal::SIGPWR as i32),
            PowerAction::PowerOff,
        ),
        (SignalKind::interrupt(), PowerAction::Reboot),
    ] {
        forward(kind, action, tx.clone());
    }
}

fn forward(kind: SignalKind, action: PowerAction, tx: mpsc::UnboundedSender<PowerAction>) {
    match signal(kind) {
        Ok(mut s) => {
            tokio::spawn(async move {
                while s.recv().await.is_some() {
                    let _ = tx.send(action);
                }
            });
        }
        Err(e) => tracing::error!("cannot handle signal {kind:?}: {e}"),
    }
}
