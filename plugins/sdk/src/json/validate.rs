//! Validating: [`validate`]'s one pass that builds nothing, and the
//! helpers its x86-64 block path shares.

use super::scan::string_special_mask;
use super::{Error, Kind, MAX_DEPTH, Value};

/// Check that `text` is exactly one valid JSON value (surrounding
/// whitespace allowed) and return its kind: the same answer and the same
/// [`Error`] as [`Value::parse`], in about a third of the time for typical
/// documents.
///
/// Valid text is checked in one iterative pass that builds nothing; only
/// invalid text is scanned a second time, by [`Value::parse`], to say where
/// and why it is invalid.
///
/// # Errors
///
/// Returns where and why `text` is not a single valid JSON value.
pub fn validate(text: &str) -> Result<Kind, Error> {
    let b = text.as_bytes();
    // Whole 64-byte blocks at a time where the CPU has the vector
    // instructions for it (every x86-64); short texts and other targets
    // byte by byte.
    #[cfg(target_arch = "x86_64")]
    let quick = if b.len() >= 64 {
        super::blocks::quick_validate(b)
    } else {
        quick_validate(b)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let quick = quick_validate(b);
    match quick {
        Some(kind) => Ok(kind),
        None => Value::parse(text).map(|v| v.kind()),
    }
}

/// The fast path of [`validate`]: `Some(kind)` exactly when [`Value::parse`]
/// accepts `b` (a `&str`'s bytes, so already valid UTF-8).
pub(super) fn quick_validate(b: &[u8]) -> Option<Kind> {
    let mut open = Containers::default();
    let mut i = quick_ws(b, 0);
    let root = kind_at(*b.get(i)?);
    // `i` is at the first byte of a value.
    'value: loop {
        match *b.get(i)? {
            b'{' => {
                open.push(true)?;
                i = quick_ws(b, i + 1);
                if *b.get(i)? != b'}' {
                    i = quick_key(b, i)?;
                    continue 'value;
                }
                i += 1;
                open.pop();
            }
            b'[' => {
                open.push(false)?;
                i = quick_ws(b, i + 1);
                if *b.get(i)? != b']' {
                    continue 'value;
                }
                i += 1;
                open.pop();
            }
            b'"' => i = quick_string(b, i)?,
            _ => i = quick_scalar(b, i)?,
        }
        // A value is complete: close containers until one goes on.
        loop {
            if open.depth == 0 {
                return (quick_ws(b, i) == b.len()).then_some(root);
            }
            i = quick_ws(b, i);
            let in_object = open.in_object();
            match (*b.get(i)?, in_object) {
                (b',', true) => {
                    i = quick_key(b, quick_ws(b, i + 1))?;
                    continue 'value;
                }
                (b',', false) => {
                    i = quick_ws(b, i + 1);
                    continue 'value;
                }
                (b'}', true) | (b']', false) => {
                    i += 1;
                    open.pop();
                }
                _ => return None,
            }
        }
    }
}

/// The open containers of a validator: one bit per level, set for an
/// object, clear for an array; at most [`MAX_DEPTH`] levels.
#[derive(Default)]
pub(super) struct Containers {
    open: [u64; MAX_DEPTH.div_ceil(64)],
    pub(super) depth: usize,
}

impl Containers {
    /// Inside `depth` containers already open (their kinds unknown: only
    /// those opened here are asked about).
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub(super) fn at_depth(depth: usize) -> Containers {
        Containers {
            depth,
            ..Containers::default()
        }
    }

    /// Open an object (`true`) or array; `None` past [`MAX_DEPTH`].
    #[inline(always)]
    pub(super) fn push(&mut self, object: bool) -> Option<()> {
        if self.depth == MAX_DEPTH {
            return None;
        }
        let (word, bit) = (self.depth / 64, 1u64 << (self.depth % 64));
        if object {
            self.open[word] |= bit;
        } else {
            self.open[word] &= !bit;
        }
        self.depth += 1;
        Some(())
    }

    /// Close the innermost container (one is open).
    #[inline(always)]
    pub(super) fn pop(&mut self) {
        self.depth -= 1;
    }

    /// Whether the innermost container (one is open) is an object.
    #[inline(always)]
    pub(super) fn in_object(&self) -> bool {
        let d = self.depth - 1;
        self.open[d / 64] >> (d % 64) & 1 == 1
    }
}

/// The kind of the value whose first byte is `c`, if it is valid there.
pub(super) fn kind_at(c: u8) -> Kind {
    match c {
        b'{' => Kind::Object,
        b'[' => Kind::Array,
        b'"' => Kind::String,
        b't' | b'f' => Kind::Bool,
        b'n' => Kind::Null,
        _ => Kind::Number,
    }
}

#[inline]
fn quick_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// From a member's key at `i` past its colon: the start of its value.
#[inline]
fn quick_key(b: &[u8], i: usize) -> Option<usize> {
    if *b.get(i)? != b'"' {
        return None;
    }
    let i = quick_ws(b, quick_string(b, i)?);
    if *b.get(i)? != b':' {
        return None;
    }
    Some(quick_ws(b, i + 1))
}

/// From the opening quote at `i`: one past the closing quote.
#[inline(always)]
fn quick_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        // Eight bytes at a time to the next quote, backslash or control byte.
        while let Some(w) = b.get(i..i + 8) {
            let mask = string_special_mask(u64::from_le_bytes(w.try_into().ok()?));
            if mask != 0 {
                i += (mask.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    if !b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            },
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
}

/// From the first byte of a number or literal at `i`: one past its end.
#[inline]
pub(super) fn quick_scalar(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b't' => quick_literal(b, i, b"true"),
        b'f' => quick_literal(b, i, b"false"),
        b'n' => quick_literal(b, i, b"null"),
        b'-' | b'0'..=b'9' => quick_number(b, i),
        _ => None,
    }
}

#[inline]
fn quick_literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

fn quick_number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}
