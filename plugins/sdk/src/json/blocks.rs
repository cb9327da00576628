//! [`validate`](super::validate)'s fast path on x86-64: classify 64 bytes
//! at a time with SSE2 (part of every x86-64 CPU, so no runtime detection),
//! then check the grammar over the structural positions only.
//!
//! Why: the host checks every document a plugin outputs, and a
//! byte-at-a-time validator spent about as many instructions on that check
//! as the plugin spent making the document. Here each byte costs a few
//! vector operations, and only structural characters (`{}[]:,`, string
//! starts and the first byte of each number or literal) reach the grammar.
//!
//! How one block is read:
//! 1. Bit masks of quotes, backslashes, structural characters, control
//!    bytes (`< 0x20`) and "blank" bytes (`<= 0x20`).
//! 2. Escaped positions: each backslash not itself escaped escapes the
//!    next byte (a scalar loop, only over blocks that hold a backslash).
//! 3. Unescaped quotes toggle "inside a string"; a prefix XOR turns them
//!    into a mask that covers each string from its opening quote up to,
//!    not including, its closing quote.
//! 4. Inside strings: no control byte, and every escape is one of
//!    `\" \\ \/ \b \f \n \r \t \uXXXX`.
//!    Outside strings: a run of bytes that is neither blank, structural
//!    nor a quote is a scalar; its first byte becomes a token and the
//!    grammar requires a whole `true`, `false`, `null` or number there.
//!    Blank control bytes other than tab, newline and carriage return are
//!    refused.
//! 5. The grammar walks the tokens (structural characters, opening quotes,
//!    scalar starts) with a bit stack of open containers.
//!
//! Every byte outside strings is either blank or part of a token the
//! grammar reads, and every byte inside a string is checked in step 4, so
//! the answer is [`Value::parse`](super::Value::parse)'s; a test compares
//! the two on tens of thousands of random corruptions.

use super::Kind;
use super::validate::{Containers, kind_at, quick_scalar};
use std::arch::x86_64::{
    __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
    _mm_set1_epi8,
};

/// The class masks of one 64-byte block; bit `k` is byte `k`.
struct Masks {
    quote: u64,
    backslash: u64,
    structural: u64,
    control: u64,
    blank: u64,
}

#[inline]
#[target_feature(enable = "sse2")]
fn bits(m: __m128i) -> u64 {
    _mm_movemask_epi8(m) as u16 as u64
}

/// Classify 16 bytes; returns (quote, backslash, structural, control, blank).
#[inline]
#[target_feature(enable = "sse2")]
fn classify16(v: __m128i) -> [u64; 5] {
    // `[` and `]` differ from `{` and `}` only in bit 0x20.
    let folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
    let structural = _mm_or_si128(
        _mm_or_si128(
            _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'{' as i8)),
            _mm_cmpeq_epi8(folded, _mm_set1_epi8(b'}' as i8)),
        ),
        _mm_or_si128(
            _mm_cmpeq_epi8(v, _mm_set1_epi8(b':' as i8)),
            _mm_cmpeq_epi8(v, _mm_set1_epi8(b',' as i8)),
        ),
    );
    // Unsigned `v < 0x20` and `v <= 0x20`: min(v, limit) == v.
    let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
    let blank = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x20)), v);
    [
        bits(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8))),
        bits(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8))),
        bits(structural),
        bits(control),
        bits(blank),
    ]
}

#[inline]
#[target_feature(enable = "sse2")]
fn classify(block: &[u8; 64]) -> Masks {
    let mut m = [0u64; 5];
    for (k, chunk) in block.chunks_exact(16).enumerate() {
        // SAFETY: `chunk` is 16 readable bytes; the load is unaligned.
        let v = unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) };
        for (all, part) in m.iter_mut().zip(classify16(v)) {
            *all |= part << (16 * k);
        }
    }
    Masks {
        quote: m[0],
        backslash: m[1],
        structural: m[2],
        control: m[3],
        blank: m[4],
    }
}

/// Bit `k` of the result is the XOR of bits `0..=k` of `x`.
#[inline(always)]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// Check one escape (`\` at `i`, inside a string).
fn escape_ok(b: &[u8], i: usize) -> bool {
    match b.get(i + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => true,
        Some(b'u') => b
            .get(i + 2..i + 6)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)),
        _ => false,
    }
}

/// The tokens of a text in order, one 64-byte block classified at a time.
struct Tokens<'a> {
    b: &'a [u8],
    /// Where the next block starts.
    next_block: usize,
    /// Where the current block starts.
    block: usize,
    /// The current block's tokens not yet returned.
    bits: u64,
    // Carried from one block to the next: the first byte is escaped; the
    // block starts inside a string (all ones) or not (zero); the previous
    // block ended in a scalar byte.
    escaped_in: u64,
    inside_in: u64,
    scalar_in: u64,
    /// A block broke a rule that holds inside strings or between tokens.
    failed: bool,
}

impl<'a> Tokens<'a> {
    fn new(b: &'a [u8]) -> Self {
        Tokens {
            b,
            next_block: 0,
            block: 0,
            bits: 0,
            escaped_in: 0,
            inside_in: 0,
            scalar_in: 0,
            failed: false,
        }
    }

    /// The position of the next token; `None` at the end of the text or
    /// when a block is invalid (then [`Tokens::failed`] is set).
    #[inline(always)]
    fn next(&mut self) -> Option<usize> {
        while self.bits == 0 {
            if self.next_block >= self.b.len() {
                return None;
            }
            self.bits = self.classify_next_block()?;
        }
        let k = self.bits.trailing_zeros() as usize;
        self.bits &= self.bits - 1;
        Some(self.block + k)
    }

    /// Classify the next block and check what can be checked per byte;
    /// returns its tokens.
    #[inline(never)]
    fn classify_next_block(&mut self) -> Option<u64> {
        let (b, base) = (self.b, self.next_block);
        self.block = base;
        self.next_block += 64;
        let padded;
        let block: &[u8; 64] = match b.get(base..base + 64) {
            Some(full) => full.try_into().expect("64 bytes"),
            None => {
                // The last, partial block, padded with blanks (no tokens).
                let mut last = [b' '; 64];
                last[..b.len() - base].copy_from_slice(&b[base..]);
                padded = last;
                &padded
            }
        };
        // SAFETY: SSE2 is part of every x86-64 CPU (the baseline of Rust's
        // x86_64 targets), so the feature `classify` needs is present.
        let m = unsafe { classify(block) };

        let mut escaped = self.escaped_in;
        self.escaped_in = 0;
        if m.backslash != 0 {
            let mut bs = m.backslash & !escaped;
            while bs != 0 {
                let k = bs.trailing_zeros();
                if k == 63 {
                    self.escaped_in = 1;
                } else {
                    escaped |= 1 << (k + 1);
                }
                // The escaped byte cannot start another escape.
                bs &= !(1 << k) & !(2u64.wrapping_shl(k));
            }
        }
        let quotes = m.quote & !escaped;
        let inside = prefix_xor(quotes) ^ self.inside_in;
        self.inside_in = ((inside as i64) >> 63) as u64;

        let fail = |t: &mut Self| {
            t.failed = true;
            None
        };
        if m.control & inside != 0 {
            return fail(self);
        }
        let mut escapes = m.backslash & !escaped & inside;
        while escapes != 0 {
            if !escape_ok(b, base + escapes.trailing_zeros() as usize) {
                return fail(self);
            }
            escapes &= escapes - 1;
        }
        let outside = !inside;
        // Control bytes outside strings may only be tab, newline or return.
        let mut stray = m.control & outside;
        while stray != 0 {
            if !matches!(
                block[stray.trailing_zeros() as usize],
                b'\t' | b'\n' | b'\r'
            ) {
                return fail(self);
            }
            stray &= stray - 1;
        }
        let scalar = outside & !(m.blank | m.structural | m.quote);
        let scalar_start = scalar & !((scalar << 1) | self.scalar_in);
        self.scalar_in = scalar >> 63;
        Some((m.structural & outside) | (quotes & inside) | scalar_start)
    }

    /// After the root value: true when nothing but blanks follows and every
    /// block was valid.
    fn finished(&mut self) -> bool {
        self.next().is_none() && !self.failed && self.inside_in == 0
    }
}

/// Read the number or literal starting at `i` and check that it is the
/// whole run of scalar bytes there.
#[inline(never)]
fn scalar(b: &[u8], i: usize) -> Option<()> {
    match b.get(quick_scalar(b, i)?) {
        Some(&next)
            if !matches!(
                next,
                0..=0x20 | b'"' | b'{' | b'}' | b'[' | b']' | b':' | b','
            ) =>
        {
            None
        }
        _ => Some(()),
    }
}

/// `Some(kind)` exactly when [`Value::parse`](super::Value::parse) accepts
/// `b` (a `&str`'s bytes, so already valid UTF-8).
pub(super) fn quick_validate(b: &[u8]) -> Option<Kind> {
    walk(b, 0, true).map(|(kind, _)| kind)
}

/// For `b` starting with `{` or `[`, inside `depth` open containers: one
/// past the end of that object or array, when it is valid (nesting
/// included: at most [`MAX_DEPTH`](super::MAX_DEPTH) levels in all);
/// `None` when it is not, or `b` starts with anything else. What follows
/// the container is not parsed, but a byte that no JSON text may hold
/// (a control character) in the container's last 64-byte block refuses it.
///
/// The same answer as the byte-at-a-time scanner for valid text, for a
/// few vector operations per byte: the host reads each change's inline
/// document this way. A `None` tells the caller to scan the text itself,
/// which says where and why it is invalid.
pub(super) fn quick_container_end(b: &[u8], depth: usize) -> Option<usize> {
    if !matches!(b.first(), Some(b'{' | b'[')) {
        return None;
    }
    walk(b, depth, false).map(|(_, end)| end)
}

/// The grammar over the tokens of `b`, from `depth` open containers: the
/// kind of the value that starts `b` and one past its end. With `whole`,
/// only blanks may follow it (the end is then `b.len()`); otherwise the
/// value must be an object or array and what follows is not read.
///
/// The grammar walks tokens, not bytes; which construct it is in lives in
/// the code's position (as in a recursive-descent parser, with an explicit
/// stack), so the regular shapes of real documents predict well.
fn walk(b: &[u8], depth: usize, whole: bool) -> Option<(Kind, usize)> {
    let mut tokens = Tokens::new(b);
    let mut open = Containers::at_depth(depth);
    let mut i = tokens.next()?;
    let root = kind_at(b[i]);
    // `i` is at a token that must start a value.
    'value: loop {
        match b[i] {
            b'"' => {}
            b'{' => {
                open.push(true)?;
                i = tokens.next()?;
                if b[i] != b'}' {
                    // The first key, its colon, then its value.
                    if b[i] != b'"' || b[tokens.next()?] != b':' {
                        return None;
                    }
                    i = tokens.next()?;
                    continue 'value;
                }
                open.pop();
            }
            b'[' => {
                open.push(false)?;
                i = tokens.next()?;
                if b[i] != b']' {
                    continue 'value;
                }
                open.pop();
            }
            b'}' | b']' | b':' | b',' => return None,
            _ => scalar(b, i)?,
        }
        // A value is complete: close containers until one goes on.
        loop {
            if open.depth == depth {
                if whole {
                    return tokens.finished().then_some((root, b.len()));
                }
                // `i` is at the root's closing bracket (every block up to
                // it passed); a string or scalar root would end elsewhere
                // (only containers are asked for).
                let closed = matches!(root, Kind::Object | Kind::Array);
                return closed.then_some((root, i + 1));
            }
            i = tokens.next()?;
            let in_object = open.in_object();
            match (b[i], in_object) {
                (b',', true) => {
                    if b[tokens.next()?] != b'"' || b[tokens.next()?] != b':' {
                        return None;
                    }
                    i = tokens.next()?;
                    continue 'value;
                }
                (b',', false) => {
                    i = tokens.next()?;
                    continue 'value;
                }
                (b'}', true) | (b']', false) => open.pop(),
                _ => return None,
            }
        }
    }
}
