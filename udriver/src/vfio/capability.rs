//! Capability chains: the `{id: u16, version: u16, next: u32}` headers that VFIO appends
//! to region info and IOMMU info replies. `next` is an offset from the start of the
//! reply; 0 ends the chain. Parsed from plain bytes, so malformed replies become errors.

use std::fmt;

/// Size of a capability header.
pub(crate) const HEADER_LEN: usize = 8;

/// One capability: its id, version, and the reply bytes from its header on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Capability<'a> {
    pub(crate) id: u16,
    pub(crate) version: u16,
    /// From the start of this capability's header to the end of the reply.
    pub(crate) bytes: &'a [u8],
}

/// Why a chain or a capability body does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CapError {
    /// A header or body runs past the end of the reply.
    Truncated {
        offset: usize,
        need: usize,
        have: usize,
    },
    /// `next` points back into the fixed struct or at an earlier capability.
    Backwards { from: usize, to: usize },
    /// A header is not 4-byte aligned.
    Misaligned { offset: usize },
}

impl fmt::Display for CapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CapError::Truncated { offset, need, have } => write!(
                f,
                "capability at {offset:#x} needs {need} bytes but the reply has {have}"
            ),
            CapError::Backwards { from, to } => write!(
                f,
                "capability at {from:#x} links back to {to:#x} (a loop or an overlap)"
            ),
            CapError::Misaligned { offset } => {
                write!(f, "capability at {offset:#x} is not 4-byte aligned")
            }
        }
    }
}

/// Walk the chain that starts at `first` (the reply's `cap_offset`) in `reply`, whose
/// fixed struct is `fixed_len` bytes long. Offsets must strictly increase, which rules
/// out loops.
pub(crate) fn parse_chain(
    reply: &[u8],
    fixed_len: usize,
    first: u32,
) -> Result<Vec<Capability<'_>>, CapError> {
    let mut caps = Vec::new();
    let mut offset = first as usize;
    let mut floor = fixed_len;
    let mut from = 0;
    while offset != 0 {
        if offset < floor {
            return Err(CapError::Backwards { from, to: offset });
        }
        if !offset.is_multiple_of(4) {
            return Err(CapError::Misaligned { offset });
        }
        let header = reply
            .get(offset..offset + HEADER_LEN)
            .ok_or(CapError::Truncated {
                offset,
                need: HEADER_LEN,
                have: reply.len().saturating_sub(offset),
            })?;
        let id = u16::from_ne_bytes([header[0], header[1]]);
        let version = u16::from_ne_bytes([header[2], header[3]]);
        let next = u32::from_ne_bytes([header[4], header[5], header[6], header[7]]);
        caps.push(Capability {
            id,
            version,
            bytes: &reply[offset..],
        });
        from = offset;
        floor = offset + HEADER_LEN;
        offset = next as usize;
    }
    Ok(caps)
}

impl<'a> Capability<'a> {
    /// The u32 at `at` bytes into this capability.
    pub(crate) fn u32_at(&self, at: usize) -> Result<u32, CapError> {
        let b = self.field(at, 4)?;
        Ok(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The u64 at `at` bytes into this capability.
    pub(crate) fn u64_at(&self, at: usize) -> Result<u64, CapError> {
        let b = self.field(at, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_ne_bytes(a))
    }

    /// `count` pairs of u64 starting `at` bytes in: the layout of both the sparse-mmap
    /// areas and the IOVA ranges.
    pub(crate) fn u64_pairs(&self, at: usize, count: u32) -> Result<Vec<(u64, u64)>, CapError> {
        let need = (count as usize)
            .checked_mul(16)
            .and_then(|n| n.checked_add(at))
            .unwrap_or(usize::MAX);
        if need > self.bytes.len() {
            return Err(CapError::Truncated {
                offset: 0,
                need,
                have: self.bytes.len(),
            });
        }
        (0..count as usize)
            .map(|i| Ok((self.u64_at(at + 16 * i)?, self.u64_at(at + 16 * i + 8)?)))
            .collect()
    }

    fn field(&self, at: usize, len: usize) -> Result<&'a [u8], CapError> {
        self.bytes
            .get(at..at.saturating_add(len))
            .filter(|b| b.len() == len)
            .ok_or(CapError::Truncated {
                offset: at,
                need: at.saturating_add(len),
                have: self.bytes.len(),
            })
    }
}

/// Builds replies with capability chains for tests of the parsers that use them.
#[cfg(test)]
pub(crate) mod build {
    /// A reply: `fixed` zero bytes, then each capability `(id, version, body)` with its
    /// header linked to the next.
    pub(crate) fn reply(fixed: usize, caps: &[(u16, u16, Vec<u8>)]) -> (Vec<u8>, u32) {
        let mut out = vec![0u8; fixed];
        let mut link_at: Option<usize> = None;
        let mut first = 0u32;
        for (id, version, body) in caps {
            while !out.len().is_multiple_of(8) {
                out.push(0);
            }
            let at = out.len();
            match link_at {
                Some(l) => out[l..l + 4].copy_from_slice(&(at as u32).to_ne_bytes()),
                None => first = at as u32,
            }
            out.extend_from_slice(&id.to_ne_bytes());
            out.extend_from_slice(&version.to_ne_bytes());
            out.extend_from_slice(&0u32.to_ne_bytes());
            link_at = Some(at + 4);
            out.extend_from_slice(body);
        }
        (out, first)
    }

    /// Little helper to lay out u32/u64 fields of a body.
    pub(crate) fn body(u32s: &[u32], u64s: &[u64]) -> Vec<u8> {
        let mut b = Vec::new();
        for v in u32s {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        for v in u64s {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::build::{body, reply};
    use super::*;

    #[test]
    fn walks_a_chain_in_order() {
        let (r, first) = reply(
            32,
            &[
                (3, 1, vec![]),
                (1, 1, body(&[2, 0], &[0, 0x1000, 0x3000, 0x1000])),
            ],
        );
        let caps = parse_chain(&r, 32, first).unwrap();
        assert_eq!(caps.iter().map(|c| c.id).collect::<Vec<_>>(), vec![3, 1]);
        assert_eq!(caps[1].u32_at(8).unwrap(), 2);
        assert_eq!(
            caps[1].u64_pairs(16, 2).unwrap(),
            vec![(0, 0x1000), (0x3000, 0x1000)]
        );
    }

    #[test]
    fn empty_chain_is_empty() {
        assert!(parse_chain(&[0u8; 32], 32, 0).unwrap().is_empty());
    }

    #[test]
    fn a_loop_is_an_error_not_a_hang() {
        let (mut r, first) = reply(32, &[(1, 1, vec![0; 8]), (2, 1, vec![0; 8])]);
        // Point the second capability back at the first.
        let second = 48;
        r[second + 4..second + 8].copy_from_slice(&first.to_ne_bytes());
        assert!(matches!(
            parse_chain(&r, 32, first),
            Err(CapError::Backwards { .. })
        ));
    }

    #[test]
    fn pointing_into_the_fixed_struct_is_an_error() {
        assert!(matches!(
            parse_chain(&[0u8; 64], 32, 8),
            Err(CapError::Backwards { .. })
        ));
    }

    #[test]
    fn truncated_header_and_body_are_errors() {
        assert!(matches!(
            parse_chain(&[0u8; 36], 32, 32),
            Err(CapError::Truncated { .. })
        ));
        let (r, first) = reply(32, &[(1, 1, body(&[1000, 0], &[]))]);
        let caps = parse_chain(&r, 32, first).unwrap();
        assert!(caps[0].u64_pairs(16, 1000).is_err());
        assert!(caps[0].u64_pairs(16, u32::MAX).is_err());
        assert!(caps[0].u64_at(1 << 20).is_err());
    }

    #[test]
    fn misaligned_offset_is_an_error() {
        assert!(matches!(
            parse_chain(&[0u8; 64], 32, 34),
            Err(CapError::Misaligned { .. })
        ));
    }
}
