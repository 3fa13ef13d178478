//! Segment files: `NNNNNNNNNN.log` (the segment number, ten digits) in the log's directory,
//! each a 16-byte header and then records.

use std::io;
use std::path::{Path, PathBuf};

/// `RINGCASTLOG`, a zero, and the format version (u32 little-endian).
const MAGIC: &[u8; 12] = b"RINGCASTLOG\0";
const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 16;

pub(crate) fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..12].copy_from_slice(MAGIC);
    h[12..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// What a segment file's first bytes say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Header {
    Valid,
    /// Shorter than a header: created, and the crash came before the header was written.
    Short,
    /// Not a ringcast log, or another version of it.
    Foreign,
}

pub(crate) fn check_header(bytes: &[u8]) -> Header {
    if bytes.len() < HEADER_LEN {
        return if MAGIC.starts_with(&bytes[..bytes.len().min(12)]) {
            Header::Short
        } else {
            Header::Foreign
        };
    }
    if bytes[..HEADER_LEN] == header() {
        Header::Valid
    } else {
        Header::Foreign
    }
}

pub(crate) fn path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:010}.log"))
}

/// The segment numbers in `dir`, oldest first.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name.strip_suffix(".log") {
            if n.len() == 10 {
                if let Ok(s) = n.parse::<u32>() {
                    out.push(s);
                }
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}
