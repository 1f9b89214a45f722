//! The signal that cuts every open tunnel when the shutdown grace period is
//! over. Every relay reads it on every wake-up, so reading it takes no lock:
//! a flag, and a [`Notify`] each relay registers with once (when it starts,
//! and again only if its task's waker changes) so that raising the signal
//! wakes them all. A `CancellationToken` here would lock its tree node and
//! its waiter list, shared by every tunnel, on every poll.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Raised once, never lowered.
#[derive(Debug, Default)]
pub struct CutSignal {
    raised: AtomicBool,
    notify: Notify,
}

impl CutSignal {
    /// A signal not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raise the signal and wake everything registered with it.
    pub fn raise(&self) {
        // The flag first: a waiter registering after the wake-up below
        // still sees it when it checks the flag after registering.
        self.raised.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether the signal is raised (one atomic load).
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// A future woken by [`CutSignal::raise`] once it has been polled (or
    /// at its first poll, if the signal was raised after it was made).
    /// Poll it, then check [`CutSignal::is_raised`]: in that order no raise
    /// is missed.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::CutSignal;

    #[test]
    fn a_registered_waiter_is_woken_and_sees_the_flag() {
        let cut = CutSignal::new();
        let mut waiter = pin!(cut.notified());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(waiter.as_mut().poll(&mut cx).is_pending());
        assert!(!cut.is_raised());
        cut.raise();
        assert!(cut.is_raised());
        assert_eq!(waiter.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn a_waiter_made_before_the_raise_but_not_yet_polled_completes() {
        let cut = CutSignal::new();
        let mut waiter = pin!(cut.notified());
        cut.raise();
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(waiter.as_mut().poll(&mut cx), Poll::Ready(()));
    }
}
