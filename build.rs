//! Emits capability aliases so that code asks "can this platform do X?"
//! rather than repeating lists of operating systems.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(immediate_power)");
    println!("cargo::rustc-check-cfg=cfg(graceful_power)");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    // reboot(2) through the Linux backend.
    if os == "linux" {
        println!("cargo::rustc-cfg=immediate_power");
    }
    // A system reboot/power-off command through a backend.
    if os == "linux" || os == "macos" {
        println!("cargo::rustc-cfg=graceful_power");
    }
}
