// SPDX-License-Identifier: GPL-2.0

//! Finding a DRM card by its driver's name, for the selftests (`drm.rs`)
//! and the demo (`demo.rs`, which includes this file with `#[path]`).

use std::os::fd::{AsFd, OwnedFd};

/// Opens the card whose DRM driver is called `driver`.
pub fn open_card(driver: &str) -> Result<OwnedFd, String> {
    let mut seen = Vec::new();
    let mut cards: Vec<_> = std::fs::read_dir("/dev/dri")
        .map_err(|e| format!("/dev/dri: {e}"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("card"))
        })
        .collect();
    cards.sort();
    for path in cards {
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        let mut name: Vec<i8> = Vec::new();
        if drm_ffi::get_version(file.as_fd(), Some(&mut name), None, None).is_err() {
            continue;
        }
        let name: String = name.iter().map(|&c| c as u8 as char).collect();
        if name == driver {
            return Ok(file.into());
        }
        seen.push(format!("{}={name}", path.display()));
    }
    Err(format!(
        "no DRM card with driver {driver} (found: {})",
        seen.join(", ")
    ))
}
