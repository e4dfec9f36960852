//! Interned account ids: a binding stores a small index instead of an `AuthId`.
//!
//! A proxy has a handful of accounts and up to millions of bindings; storing the account
//! as a 24-bit index keeps a binding's value at 8 bytes (index + write time), which drops
//! moka's per-entry value allocation a size class and makes a freshly allocated `AuthId`
//! per response cost nothing per binding.
//!
//! Reads (index → account) take no lock: the table is a fixed list of geometrically
//! growing chunks, each slot a `OnceLock` written once. Writes (account → index) go
//! through an `RwLock`ed map, taken only by commits that write a binding; the fast path
//! of a commit compares the stored account with `Arc` pointer equality first.

use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

use crate::types::AuthId;

/// The most accounts one store can intern (indexes are 24 bits; rule 7, *bounded*).
pub(super) const MAX_ACCOUNTS: u32 = 1 << 24;

/// Slots in chunk 0; chunk `c` holds `FIRST << c`.
const FIRST: u32 = 16;
/// Chunks needed to cover `MAX_ACCOUNTS` indexes.
const CHUNKS: usize = 21;

type Chunk = Box<[OnceLock<AuthId>]>;

pub(super) struct Accounts {
    by_name: RwLock<HashMap<AuthId, u32>>,
    chunks: [OnceLock<Chunk>; CHUNKS],
}

/// `(chunk, offset)` of index `i`.
#[inline]
fn place(i: u32) -> (usize, usize) {
    let n = i / FIRST + 1;
    let c = 31 - n.leading_zeros();
    let base = FIRST * ((1 << c) - 1);
    (c as usize, (i - base) as usize)
}

impl Accounts {
    pub(super) fn new() -> Self {
        Self {
            by_name: RwLock::new(HashMap::new()),
            chunks: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The account with index `i`, if one was interned under it.
    #[inline]
    pub(super) fn get(&self, i: u32) -> Option<&AuthId> {
        let (c, o) = place(i);
        self.chunks.get(c)?.get()?.get(o)?.get()
    }

    /// The index of `auth`, interning it if it is new; `None` once `MAX_ACCOUNTS` distinct
    /// accounts have been interned.
    pub(super) fn intern(&self, auth: &AuthId) -> Option<u32> {
        let read = self.by_name.read().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = read.get(auth) {
            return Some(i);
        }
        drop(read);
        let mut map = self.by_name.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&i) = map.get(auth) {
            return Some(i);
        }
        let i = u32::try_from(map.len())
            .ok()
            .filter(|&i| i < MAX_ACCOUNTS)?;
        let (c, o) = place(i);
        let chunk = self.chunks[c].get_or_init(|| {
            (0..(FIRST << c))
                .map(|_| OnceLock::new())
                .collect::<Vec<_>>()
                .into_boxed_slice()
        });
        // The slot is filled before the index is published (through the map here, and
        // through a cache value by the caller), so a reader that sees `i` finds it set.
        let _ = chunk[o].set(auth.clone());
        map.insert(auth.clone(), i);
        Some(i)
    }

    /// How many accounts are interned.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_name.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_map_to_consecutive_chunk_slots() {
        assert_eq!(place(0), (0, 0));
        assert_eq!(place(15), (0, 15));
        assert_eq!(place(16), (1, 0));
        assert_eq!(place(47), (1, 31));
        assert_eq!(place(48), (2, 0));
        assert_eq!(place(MAX_ACCOUNTS - 1).0, CHUNKS - 1);
        let last = place(MAX_ACCOUNTS - 1);
        assert!(last.1 < (FIRST << last.0) as usize);
    }

    #[test]
    fn the_same_account_interns_to_the_same_index_whatever_its_allocation() {
        let accounts = Accounts::new();
        let names: Vec<String> = (0..100).map(|i| format!("acct-{i}")).collect();
        for (i, n) in names.iter().enumerate() {
            assert_eq!(accounts.intern(&AuthId::from(n.as_str())), Some(i as u32));
        }
        for (i, n) in names.iter().enumerate() {
            assert_eq!(accounts.intern(&AuthId::from(n.as_str())), Some(i as u32));
            assert_eq!(accounts.get(i as u32).unwrap().as_str(), n);
        }
        assert_eq!(accounts.len(), 100);
        assert!(accounts.get(100).is_none());
    }
}
