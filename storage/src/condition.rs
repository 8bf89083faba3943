//! [`Condition`]: a condition variable that makes no system call to notify when no
//! thread waits on it.
//!
//! std's `Condvar::notify_all` is a `futex` wake every time, waiter or not. A
//! partition notifies on every append and a dedup window on every publish with ids,
//! almost always with nobody blocked (async callers wait on wakers, not here), so each
//! of those paid a system call a batch that woke no one (`strace`: one `FUTEX_WAKE` a
//! batch, returning 0).
//!
//! The rule that keeps it correct: a thread counts itself in while it holds the mutex,
//! before `wait` releases it; an update changes the state under the same mutex and
//! notifies after. So a thread either saw the update before it waited, or was counted
//! when the update's `notify_all` looked.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, MutexGuard, PoisonError};
use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct Condition {
    condvar: Condvar,
    /// Threads inside `wait` or `wait_timeout`.
    blocked: AtomicUsize,
}

impl Condition {
    /// Blocks until notified (or spuriously), as `Condvar::wait`; a poisoned mutex is
    /// taken as it is.
    pub fn wait<'a, T>(&self, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
        self.blocked.fetch_add(1, Ordering::SeqCst);
        let guard = self
            .condvar
            .wait(guard)
            .unwrap_or_else(PoisonError::into_inner);
        self.blocked.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// [`Condition::wait`] for at most `timeout`.
    pub fn wait_timeout<'a, T>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> MutexGuard<'a, T> {
        self.blocked.fetch_add(1, Ordering::SeqCst);
        let (guard, _) = self
            .condvar
            .wait_timeout(guard, timeout)
            .unwrap_or_else(PoisonError::into_inner);
        self.blocked.fetch_sub(1, Ordering::SeqCst);
        guard
    }

    /// Wakes every blocked thread, if there is one. Call it after changing the state
    /// under the mutex (holding it or not).
    pub fn notify_all(&self) {
        if self.blocked.load(Ordering::SeqCst) > 0 {
            self.condvar.notify_all();
        }
    }

    /// How many threads are blocked (for tests).
    #[cfg(test)]
    pub fn blocked(&self) -> usize {
        self.blocked.load(Ordering::SeqCst)
    }

    /// Waits (10 s at most, then panics) until exactly `count` threads are blocked: a
    /// test's way to know its threads wait before it updates.
    #[cfg(test)]
    pub fn until_blocked(&self, count: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.blocked() != count {
            assert!(
                std::time::Instant::now() < deadline,
                "{} threads blocked, not {count}",
                self.blocked()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::{Arc, Mutex};

    /// Threads waiting (with and without a timeout) for a value are woken by the
    /// update that reaches it, and by no other; they are counted while they wait.
    #[test]
    fn blocked_threads_are_counted_and_woken() {
        let shared = Arc::new((Mutex::new(0u32), Condition::default()));
        // Nobody blocked: a notify is only a load.
        shared.1.notify_all();
        let (done_tx, done) = mpsc::channel();
        let threads: Vec<_> = [(3, None), (5, Some(Duration::from_secs(60)))]
            .into_iter()
            .map(|(target, timeout)| {
                let (shared, done_tx) = (shared.clone(), done_tx.clone());
                std::thread::spawn(move || {
                    let (value, condition) = &*shared;
                    let mut guard = value.lock().unwrap();
                    while *guard < target {
                        guard = match timeout {
                            None => condition.wait(guard),
                            Some(timeout) => condition.wait_timeout(guard, timeout),
                        };
                    }
                    done_tx.send(target).unwrap();
                })
            })
            .collect();
        shared.1.until_blocked(2);
        let set = |to: u32| {
            *shared.0.lock().unwrap() = to;
            shared.1.notify_all();
        };
        set(2);
        assert!(done.recv_timeout(Duration::from_millis(50)).is_err());
        shared.1.until_blocked(2);
        set(3);
        assert_eq!(done.recv_timeout(Duration::from_secs(10)), Ok(3));
        shared.1.until_blocked(1);
        set(5);
        assert_eq!(done.recv_timeout(Duration::from_secs(10)), Ok(5));
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(shared.1.blocked(), 0);
    }

    /// A wait with a timeout returns when it passes, uncounted.
    #[test]
    fn a_timed_wait_returns_and_is_no_longer_counted() {
        let mutex = Mutex::new(());
        let condition = Condition::default();
        drop(condition.wait_timeout(mutex.lock().unwrap(), Duration::from_millis(20)));
        assert_eq!(condition.blocked(), 0);
    }
}
