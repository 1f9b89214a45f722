//! Record ids: ULIDs, time-ordered to the millisecond and monotonic within a
//! thread. A per-thread generator keeps id creation free of locks on the hot
//! path; 80 random bits make collisions across threads negligible.

use std::cell::RefCell;

thread_local! {
    static GENERATOR: RefCell<ulid::Generator> = const { RefCell::new(ulid::Generator::new()) };
}

/// The next id.
pub fn next() -> ulid::Ulid {
    GENERATOR.with(|g| match g.borrow_mut().generate() {
        Ok(id) => id,
        // The random part overflowed within one millisecond: a fresh random id
        // is still unique with overwhelming probability.
        Err(_) => ulid::Ulid::new(),
    })
}
