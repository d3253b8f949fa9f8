//! An initramfs image: an uncompressed cpio archive in the kernel's `newc` format
//! (Documentation/driver-api/early-userspace/buffer-format.rst), built in memory, so that
//! the host needs no `cpio` to boot a QEMU guest.

use std::path::Path;

use anyhow::{Context, Result};

/// Entries of an initramfs, written in the order they were added (parents first).
#[derive(Default)]
pub struct Initramfs {
    bytes: Vec<u8>,
    next_inode: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory `path` (relative to the root, no leading `/`), mode 0755.
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(path, S_IFDIR | 0o755, &[]);
        self
    }

    /// A regular file `path` holding `data`, with permission bits `mode`.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(path, S_IFREG | (mode & 0o7777), data);
        self
    }

    /// A regular file `path` holding a copy of the host's file `source`.
    pub fn copy(&mut self, path: &str, mode: u32, source: &Path) -> Result<&mut Self> {
        let data =
            std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        Ok(self.file(path, mode, &data))
    }

    /// A symbolic link `path` pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, S_IFLNK | 0o777, target.as_bytes());
        self
    }

    /// The archive, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, 0);
        self.bytes
    }

    fn entry(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.next_inode += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        self.header(path, mode, nlink, data.len());
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, size: usize) {
        let inode = if nlink == 0 { 0 } else { self.next_inode };
        // magic, then ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor
        // rdevminor namesize check, each eight hex digits.
        let fields = [inode, mode, 0, 0, nlink, 0, size as u32, 0, 0, 0, 0];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes
            .extend_from_slice(format!("{:08x}{:08x}", name.len() + 1, 0).as_bytes());
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a newc archive into (name, mode, data), checking each header's framing.
    fn entries(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        loop {
            assert_eq!(&bytes[at..at + 6], b"070701", "magic at {at}");
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[at + 6 + 8 * i..at + 14 + 8 * i]).unwrap();
                u32::from_str_radix(s, 16).unwrap() as usize
            };
            let (mode, size, namesize) = (field(1) as u32, field(6), field(11));
            let name_at = at + 110;
            let name = std::str::from_utf8(&bytes[name_at..name_at + namesize - 1]).unwrap();
            assert_eq!(
                bytes[name_at + namesize - 1],
                0,
                "name of {name} ends in NUL"
            );
            let data_at = (name_at + namesize).next_multiple_of(4);
            if name == "TRAILER!!!" {
                assert_eq!(data_at, bytes.len(), "the trailer ends the archive");
                return out;
            }
            out.push((
                name.to_string(),
                mode,
                bytes[data_at..data_at + size].to_vec(),
            ));
            at = (data_at + size).next_multiple_of(4);
        }
    }

    #[test]
    fn archive_holds_dirs_files_and_links_in_order() {
        let mut archive = Initramfs::new();
        archive
            .dir("bin")
            .file("bin/busybox", 0o755, b"\x7fELF and more")
            .symlink("bin/sh", "busybox")
            .file("init", 0o755, b"#!/bin/sh\n");
        let got = entries(&archive.finish());
        assert_eq!(
            got,
            vec![
                ("bin".to_string(), S_IFDIR | 0o755, vec![]),
                (
                    "bin/busybox".to_string(),
                    S_IFREG | 0o755,
                    b"\x7fELF and more".to_vec()
                ),
                ("bin/sh".to_string(), S_IFLNK | 0o777, b"busybox".to_vec()),
                ("init".to_string(), S_IFREG | 0o755, b"#!/bin/sh\n".to_vec()),
            ]
        );
    }

    #[test]
    fn every_entry_starts_four_byte_aligned() {
        let mut archive = Initramfs::new();
        // Names and sizes chosen so that every padding length 0-3 occurs.
        for (i, len) in [0usize, 1, 2, 3, 5].into_iter().enumerate() {
            archive.file(&"x".repeat(i + 1), 0o644, &vec![b'a'; len]);
        }
        let bytes = archive.finish();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(entries(&bytes).len(), 5);
    }
}
