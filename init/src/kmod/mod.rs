//! Kernel modules: the module index, device aliases, loading, the modprobe helper and uevents.

use std::path::Path;

use osk_layout::marker::Event;

use crate::log::console::mark;
use crate::paths;

pub mod modalias;
pub mod modprobe;
pub mod modules;
pub mod platform;
pub mod uevent;

/// Boot-time loading: indexes the modules, installs the modprobe helper,
/// loads the image's list and then the drivers for the devices present.
pub fn load_at_boot() {
    use modules::Kmod;
    let dir = modprobe::release_dir();
    let (index, errors) = modules::index_dir(&dir);
    for e in errors {
        tracing::warn!("skipping module: {e}");
    }
    if let Err(e) = modules::save_index(&index, &dir, Path::new(paths::MODULES_INDEX)) {
        tracing::warn!("saving the module index for modprobe: {e}");
    }
    // The helper first: modules loaded below may ask for others (libcrc32c
    // for crc32c).
    match std::env::current_exe() {
        Ok(exe) => {
            if let Err(e) = modprobe::install(&exe) {
                tracing::warn!("no modprobe helper ({e}); modules load only at boot");
            }
        }
        Err(e) => tracing::warn!("no modprobe helper (own path: {e})"),
    }
    // The image's list: loaded whatever the hardware; then what the
    // platform calls for, when the image has it.
    let mut wanted = std::fs::read_to_string(Path::new("/").join(osk_layout::MODULES_LIST))
        .map(|t| modules::parse_list(&t))
        .unwrap_or_default();
    let clocks = std::fs::read_to_string(platform::CLOCKSOURCES).unwrap_or_default();
    wanted.extend(
        platform::wanted(&clocks)
            .into_iter()
            .filter(|m| index.contains_key(m)),
    );
    let (order, missing) = modules::load_order(&index, Some(&wanted));
    for m in missing {
        tracing::warn!(
            "module {m} not found under {} (listed in /{} or a dependency)",
            dir.display(),
            osk_layout::MODULES_LIST
        );
    }
    let kmod = crate::sys::RealKmod;
    let listed = modules::load(&kmod, &index, &order);
    let mut tried = order.into_iter().collect();
    // Subscribed before the first walk, so no device added after it is
    // missed; later looks read only what the kernel announced since.
    let events = uevent::Listener::open()
        .map_err(|e| tracing::debug!("no uevents ({e}); sysfs is walked after every load"))
        .ok();
    let devices = modalias::coldplug(
        &kmod,
        &index,
        modalias::walk_once(
            || modalias::scan(Path::new("/sys/devices")),
            events.map(|l| move || l.drain_added()),
        ),
        &mut tried,
    );
    for (m, e) in listed.failed.iter().chain(&devices.failed) {
        tracing::warn!("loading module {m} failed: {e}");
    }
    let waiting = index.keys().filter(|m| !kmod.is_loaded(m)).count();
    tracing::info!(
        "modules: {} listed, {} for devices, {} failed; {waiting} more load when the kernel asks",
        listed.loaded.len(),
        devices.loaded.len(),
        listed.failed.len() + devices.failed.len(),
    );
    mark(Event::ModulesLoaded);
}
