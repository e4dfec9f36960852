//! The model check of the module's rules 1–3 with `loom`, which runs each model under
//! every interleaving of its threads (and every value a relaxed load may read):
//!
//! ```text
//! RUSTFLAGS="--cfg sticky_loom" CARGO_TARGET_DIR=target/loom cargo test --release --lib loom_
//! ```
//!
//! The models drive the store's own code for the hot table ([`Hot`]), the stripe
//! generations ([`Generations`], every write through [`Generations::after_write`]) and the
//! read side of a hinted lookup ([`hinted_read`]). Only moka's protected segment is
//! stood in for, by a mutex around one key's binding: a write of it under the lock, like
//! every write of the store under its shard lock (rule 4). Tables of two slots and four
//! stripes (the `cfg(sticky_loom)` sizes) keep the models small. What breaking each rule does to
//! these models is recorded in `docs/store-model-check.md`.

use loom::sync::atomic::AtomicBool;
use loom::sync::{Arc, Mutex};
use loom::thread;
use std::sync::atomic::Ordering;

use super::hot::Hot;
use super::{Binding, Generations, hinted_read};

/// A key; its digest's high bit is clear, so it shares slot 0 with [`OTHER`].
const KEY: u64 = 0x0000_0000_0000_0011;
/// Another key in the same slot (and another stripe).
const OTHER: u64 = 0x0000_0000_0000_0022;
const OLD: u64 = 0xA1;
const NEW: u64 = 0xA2;
const OTHERS: u64 = 0xB1;
/// A protected segment of 16 bindings: a table of two slots, an eviction window of one.
const PROTECTED: u64 = 16;
const MAX_AGE_MS: u64 = 1_000;

/// The store's hot table and stripes over one key's protected binding.
struct Store {
    gens: Generations,
    hot: Hot,
    protected: Mutex<Option<u64>>,
}

impl Store {
    fn with(binding: Option<u64>) -> Self {
        Self {
            gens: Generations::new(0),
            hot: Hot::new(PROTECTED, MAX_AGE_MS),
            protected: Mutex::new(binding),
        }
    }

    /// A hinted lookup of [`KEY`]: the binding, and the generation its hint carries.
    fn lookup(&self) -> Option<(u64, u32)> {
        hinted_read(&self.gens, &self.hot, KEY, 0, || {
            self.protected.lock().unwrap().map(|b| (Binding(b), true))
        })
        .map(|(b, _, generation)| (b.0, generation))
    }

    /// `clear_if(KEY, expected)`, as the store writes: under the lock, then the bump.
    fn clear_if(&self, expected: u64) -> bool {
        self.gens.after_write(KEY, || {
            let mut b = self.protected.lock().unwrap();
            let matches = *b == Some(expected);
            if matches {
                *b = None;
            }
            matches
        })
    }

    /// `commit(KEY, binding)`, as the store writes.
    fn commit(&self, binding: u64) {
        self.gens.after_write(KEY, || {
            *self.protected.lock().unwrap() = Some(binding);
        });
    }
}

/// Rules 2 and 3: once a clear has returned, no lookup returns the cleared binding, from
/// protected or from a slot filled before, during or after the clear.
#[test]
fn loom_no_lookup_after_a_clear_returns_the_cleared_binding() {
    loom::model(|| {
        let store = Arc::new(Store::with(Some(OLD)));
        let cleared = Arc::new(AtomicBool::new(false));
        let clearer = {
            let (store, cleared) = (store.clone(), cleared.clone());
            thread::spawn(move || {
                assert!(store.clear_if(OLD));
                cleared.store(true, Ordering::Release);
            })
        };
        for _ in 0..2 {
            let after = cleared.load(Ordering::Acquire);
            let found = store.lookup();
            if after {
                assert_eq!(found, None, "a lookup after the clear returned the binding");
            } else {
                assert!(matches!(found, None | Some((OLD, _))));
            }
        }
        clearer.join().unwrap();
    });
}

/// Rules 2 and 3, the hint: a hint of the binding a commit replaced is stale once the
/// commit has returned, so a hinted commit never skips over it.
#[test]
fn loom_a_hint_of_a_replaced_binding_is_stale() {
    loom::model(|| {
        let store = Arc::new(Store::with(Some(OLD)));
        let written = Arc::new(AtomicBool::new(false));
        let writer = {
            let (store, written) = (store.clone(), written.clone());
            thread::spawn(move || {
                store.commit(NEW);
                written.store(true, Ordering::Release);
            })
        };
        for _ in 0..2 {
            let found = store.lookup();
            if written.load(Ordering::Acquire) {
                if let Some((OLD, generation)) = found {
                    assert!(
                        !store.gens.unchanged(KEY, generation),
                        "a hint of the replaced binding is still current"
                    );
                }
                // A lookup that starts now finds the new binding.
                assert_eq!(
                    store.lookup().map(|(b, _)| b),
                    Some(NEW),
                    "stale after the write"
                );
            }
        }
        writer.join().unwrap();
    });
}

/// Rule 1: a reader of a slot that a filler is rewriting for another key gets the first
/// key's binding or nothing, never the other key's binding (or a generation of one fill
/// with the digest of another).
#[test]
fn loom_readers_never_see_a_torn_slot() {
    loom::model(|| {
        let hot = Arc::new(Hot::new(PROTECTED, MAX_AGE_MS));
        hot.fill(KEY, OLD, 1, 0);
        let filler = {
            let hot = hot.clone();
            thread::spawn(move || hot.fill(OTHER, OTHERS, 2, 0))
        };
        let mine = hot.get(KEY, 1, 0);
        assert!(
            matches!(mine, None | Some(OLD)),
            "torn slot: {mine:?} for KEY"
        );
        let mixed = hot.get(KEY, 2, 0);
        assert_eq!(
            mixed, None,
            "torn slot: KEY with the other fill's generation"
        );
        filler.join().unwrap();
        // Once the fill is done, the slot holds the other key, whole.
        assert_eq!(hot.get(OTHER, 2, 0), Some(OTHERS));
        assert_eq!(hot.get(KEY, 1, 0), None);
    });
}
