//! The algorithms, one module each and named as users name them; what every algorithm answers;
//! and the contract of those whose whole per-key state fits one `u64` (token bucket, fixed
//! window, sliding window counter). Which algorithms exist is said once, in `registry`.

pub mod fixed_window;
pub mod sliding_log;
pub mod sliding_window;
pub mod token_bucket;

/// One decision, times in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    /// Units that could still be consumed right after this decision.
    pub remaining: u64,
    /// Time until the key's state is back to a fresh key's (the bucket is full again).
    pub reset_after: u64,
    /// Time until the same request would be allowed; 0 when allowed.
    pub retry_after: u64,
}

/// An algorithm whose per-key state is a single word, updated by compare-and-swap.
///
/// The word `0` is the state of a key never seen, for every implementation, so a missing key
/// and a fresh key are the same thing and the table can drop keys whose word `is_fresh`.
pub trait WordAlgorithm: Send + Sync + 'static {
    /// Decides a request of `cost` at `now` against `word`. Returns the outcome and the word to
    /// store; a denial returns `word` unchanged, so the caller writes nothing.
    fn step(&self, word: u64, now: u64, cost: u64) -> (Outcome, u64);

    /// True when `word` at `now` behaves exactly like `0` for every future request.
    fn is_fresh(&self, word: u64, now: u64) -> bool;

    /// Gives back `cost` units consumed moments ago (an all-or-nothing batch that failed
    /// later): the word with that consumption taken out, never below a fresh state.
    fn refund(&self, word: u64, now: u64, cost: u64) -> u64;

    /// The word with exactly `available` units left now (capped at what a fresh key has):
    /// how hybrid mode folds the shared state into the local one.
    fn set_available(&self, word: u64, now: u64, available: u64) -> u64;
}
