//! Modules the platform calls for that no device announces: the hypervisor's
//! host clock (`ptp_kvm`, KVM's PTP clock as /dev/ptp0, which the timesync
//! service prefers to the RTC) has no modalias, so it is loaded when the
//! machine runs under KVM, seen from the clock sources it offers.

/// Where the kernel lists the clock sources it can use.
pub const CLOCKSOURCES: &str = "/sys/devices/system/clocksource/clocksource0/available_clocksource";

/// The modules the platform behind `available_clocksource`'s text calls for.
pub fn wanted(available_clocksource: &str) -> Vec<String> {
    let mut wanted = Vec::new();
    // kvm-clock: x86 under KVM. (arm64 builds ptp_kvm in.)
    if available_clocksource
        .split_whitespace()
        .any(|c| c == "kvm-clock")
    {
        wanted.push("ptp_kvm".to_string());
    }
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptp_kvm_only_under_kvm() {
        assert_eq!(wanted("kvm-clock tsc hpet acpi_pm \n"), ["ptp_kvm"]);
        // TCG and bare metal: no kvm-clock.
        assert!(wanted("tsc hpet acpi_pm \n").is_empty());
        assert!(wanted("").is_empty());
        // A name that only contains it is another clock.
        assert!(wanted("not-kvm-clock tsc").is_empty());
    }
}
