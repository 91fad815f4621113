// SPDX-License-Identifier: GPL-2.0

//! A scratch ext4 file system on a loop device: a page-cache file system
//! (tmpfs is not one: it has no writeback), for the selftests (`shared.rs`)
//! and the stress program, which includes this file with `#[path]`.

use std::fs::{self, File};

/// Runs a command of the guest's userland; an error with its output if it
/// fails.
pub fn run_cmd(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {args:?}: {} {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A 32 MiB ext4 file system in an image file, mounted with `-o loop` on a
/// directory in /tmp; unmounted, and its image and directory removed, by
/// [`Ext4::unmount`] or on drop.
pub struct Ext4 {
    dir: String,
    img: String,
    mounted: bool,
}

impl Ext4 {
    /// Makes and mounts one on `/tmp/mremap-dup-<tag>-<pid>`.
    pub fn mount(tag: &str) -> Result<Ext4, String> {
        let dir = format!("/tmp/mremap-dup-{tag}-{}", std::process::id());
        let img = format!("{dir}.img");
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {dir}: {e}"))?;
        let f = File::create(&img).map_err(|e| format!("{img}: {e}"))?;
        f.set_len(32 << 20).map_err(|e| format!("{img}: {e}"))?;
        drop(f);
        let mut e = Ext4 {
            dir,
            img,
            mounted: false,
        };
        run_cmd("mkfs.ext4", &["-q", "-F", &e.img])?;
        run_cmd("mount", &["-o", "loop", &e.img, &e.dir])?;
        e.mounted = true;
        Ok(e)
    }

    /// The path of `name` in the file system.
    pub fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.dir)
    }

    /// Unmounts it, an error if umount fails (a file still open or mapped).
    pub fn unmount(mut self) -> Result<(), String> {
        self.mounted = false;
        run_cmd("umount", &[&self.dir])
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if self.mounted {
            let _ = run_cmd("umount", &[&self.dir]);
        }
        let _ = fs::remove_file(&self.img);
        let _ = fs::remove_dir(&self.dir);
    }
}
