//! Emits the capability alias `immediate_power` (the platform has
//! `reboot(2)` for immediate operations), so that code asks "can this
//! platform do X?" rather than repeating a list of operating systems.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(immediate_power)");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo::rustc-cfg=immediate_power");
    }
}
