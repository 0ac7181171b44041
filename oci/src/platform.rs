//! Platforms as written: `oci_spec`'s [`Platform`] holds os and architecture as enums
//! parsed from Go's names, and one of its mappings does not round-trip (`armbe` reads
//! back as `arm64be`); [`platform`] keeps exactly the names it is given.

use oci_spec::image::{Arch, Os, Platform};

/// The platform `os`/`architecture`[/`variant`], its names kept as given.
pub fn platform(os: &str, architecture: &str, variant: Option<&str>) -> Platform {
    let mut arch = Arch::from(architecture);
    if arch.to_string() != architecture {
        arch = Arch::Other(architecture.to_string());
    }
    let mut system = Os::from(os);
    if system.to_string() != os {
        system = Os::Other(os.to_string());
    }
    let mut platform = Platform::default();
    platform.set_architecture(arch);
    platform.set_os(system);
    platform.set_variant(variant.map(str::to_string));
    platform
}

/// `os/architecture[/variant]`.
pub fn name(platform: &Platform) -> String {
    match platform.variant() {
        Some(variant) => format!("{}/{}/{variant}", platform.os(), platform.architecture()),
        None => format!("{}/{}", platform.os(), platform.architecture()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept() {
        for (os, arch, variant) in [
            ("linux", "amd64", None),
            ("linux", "arm", Some("v7")),
            ("linux", "armbe", None),
            ("plan9", "386", None),
            ("weird_os", "weird_arch", Some("v0")),
        ] {
            let p = platform(os, arch, variant);
            let json = serde_json::to_value(&p).expect("json");
            assert_eq!(json["os"], os);
            assert_eq!(json["architecture"], arch);
            assert_eq!(json.get("variant").and_then(|v| v.as_str()), variant);
            assert_eq!(
                json.as_object().map(|o| o.len()),
                Some(2 + usize::from(variant.is_some()))
            );
        }
        assert_eq!(
            name(&platform("linux", "arm64", Some("v8"))),
            "linux/arm64/v8"
        );
    }
}
