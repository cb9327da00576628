//! Reading the files a user points pillowtop at (components, manifests,
//! fixtures, configs) with a size bound.
//!
//! A path may name anything: `/dev/zero`, a FIFO, a directory, a
//! multi-gigabyte file. Reading it whole would hang or exhaust memory, so
//! every such read goes through [`read_bounded`]: only a regular file (after
//! following symlinks) of at most `max_bytes` is read, and the read stops
//! one byte past the bound even if the file grows meanwhile.

use std::io::Read;
use std::path::Path;

/// Why a bounded read failed; the `Display` text says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The OS refused (missing file, no permission).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Not a regular file: a directory, a device, a FIFO, a socket.
    #[error("not a regular file ({0}); point it at a file")]
    NotAFile(&'static str),
    /// Larger than the bound.
    #[error("{size} bytes, over the limit of {max} bytes ({setting})")]
    TooLarge {
        /// Size seen (at least `max + 1` when the file grew while read).
        size: u64,
        /// The bound.
        max: u64,
        /// The setting that raises the bound.
        setting: &'static str,
    },
}

/// Read the regular file at `path`, refusing anything larger than
/// `max_bytes` (`setting` names the key that raises the bound).
///
/// # Errors
///
/// See [`ReadError`].
pub fn read_bounded(
    path: &Path,
    max_bytes: u64,
    setting: &'static str,
) -> Result<Vec<u8>, ReadError> {
    let meta = std::fs::metadata(path)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(ReadError::NotAFile(describe(&kind)));
    }
    if meta.len() > max_bytes {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            max: max_bytes,
            setting,
        });
    }
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            max: max_bytes,
            setting,
        });
    }
    Ok(bytes)
}

/// [`read_bounded`] for text.
///
/// # Errors
///
/// See [`ReadError`]; invalid UTF-8 is an [`ReadError::Io`] of kind `InvalidData`.
pub fn read_text_bounded(
    path: &Path,
    max_bytes: u64,
    setting: &'static str,
) -> Result<String, ReadError> {
    let bytes = read_bounded(path, max_bytes, setting)?;
    String::from_utf8(bytes).map_err(|e| {
        ReadError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text: {e}"),
        ))
    })
}

fn describe(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_regular_file_within_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_bounded(&path, 5, "k").unwrap(), b"12345");
        let err = read_bounded(&path, 4, "limits.k").unwrap_err().to_string();
        assert_eq!(err, "5 bytes, over the limit of 4 bytes (limits.k)");
    }

    #[test]
    fn refuses_what_is_not_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_bounded(dir.path(), 1 << 20, "k")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a directory"), "{err}");
        // /dev/zero never ends: reading it whole would exhaust memory.
        let err = read_bounded(Path::new("/dev/zero"), 1 << 20, "k")
            .unwrap_err()
            .to_string();
        assert!(err.contains("a character device"), "{err}");
        let err = read_bounded(&dir.path().join("missing"), 1, "k").unwrap_err();
        assert!(matches!(err, ReadError::Io(ref e) if e.kind() == std::io::ErrorKind::NotFound));
    }

    #[test]
    fn text_must_be_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        std::fs::write(&path, [0xff, 0xfe]).unwrap();
        let err = read_text_bounded(&path, 10, "k").unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
    }
}
