// SPDX-License-Identifier: GPL-2.0

//! Selftests for mremap(2) `MREMAP_DUP`, run inside the guest.
//!
//! Usage: `mremap-dup-selftests [NAME-SUBSTRING...]`. Prints KTAP; the exit
//! status is 1 if any test failed. `mremap-dup-selftests --harness-selftest
//! DIR` runs the harness's own tests instead (scripts/tests/).

mod card;
mod drm;
mod ext4;
mod harness;
mod harness_check;
mod shared;
mod testdev;
mod util;
mod vfio;

fn main() {
    let filters: Vec<String> = std::env::args().skip(1).collect();
    if filters.first().map(String::as_str) == Some("--harness-selftest") {
        let tests: Vec<&harness::Test> = harness_check::TESTS.iter().collect();
        let failed = harness::run(&tests, &[]);
        std::process::exit(i32::from(failed > 0));
    }
    let tests: Vec<&harness::Test> = [shared::TESTS, testdev::TESTS, drm::TESTS, vfio::TESTS]
        .into_iter()
        .flatten()
        .collect();
    let failed = harness::run(&tests, &filters);
    std::process::exit(i32::from(failed > 0));
}
