//! How far a partition's log has got (written, durable, start) and the ways to wait
//! for it to get further: std `Future`s for async callers (no runtime dependency) and
//! blocking calls for threads.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::condition::Condition;
use crate::error::{Error, Result};

/// A position at the end of a log: the next offset and where it would be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogEnd {
    pub offset: u64,
    pub segment_base: u64,
    pub position: u64,
}

#[derive(Debug)]
pub(crate) struct ProgressState {
    pub written: LogEnd,
    pub durable: LogEnd,
    pub log_start: u64,
    /// Readers see only durable data (fsync = always).
    pub durable_only: bool,
    /// What readers saw when the partition switched to durable-only (an alter to
    /// `fsync = always`), written but maybe not yet durable: they keep seeing it until
    /// the durable end passes it, so the visible end never goes back.
    kept_visible: Option<LogEnd>,
    pub poisoned: Option<String>,
    pub closed: bool,
    /// Closed because its topic was deleted (not because the store closed).
    pub deleted: bool,
    /// Recovery refused to open it: every call fails with this.
    pub unavailable: Option<Error>,
    /// The last flush failed before any fsync ran (a file or directory could not be
    /// opened): waits for offsets below the first (what it was to cover) fail with the
    /// second until a flush gets the durable end that far. Not a poison.
    flush_failed: Option<(u64, Error)>,
    data_wakers: Vec<Waker>,
    durable_wakers: Vec<(u64, Waker)>,
}

impl ProgressState {
    /// What readers may see.
    pub fn visible(&self) -> LogEnd {
        if !self.durable_only {
            return self.written;
        }
        match self.kept_visible {
            Some(kept) if kept.offset > self.durable.offset => kept,
            _ => self.durable,
        }
    }
}

/// Shared between a partition, its flusher and every waiter.
#[derive(Debug)]
pub(crate) struct Progress {
    name: String,
    state: Mutex<ProgressState>,
    /// Blocked threads' wait (an append updates the progress once a batch, almost
    /// always with nobody blocked: see [`Condition`]).
    changed: Condition,
}

impl Progress {
    pub fn new(name: String, end: LogEnd, log_start: u64, durable_only: bool) -> Arc<Self> {
        Arc::new(Progress {
            name,
            state: Mutex::new(ProgressState {
                written: end,
                durable: end,
                log_start,
                durable_only,
                kept_visible: None,
                poisoned: None,
                closed: false,
                deleted: false,
                unavailable: None,
                flush_failed: None,
                data_wakers: Vec::new(),
                durable_wakers: Vec::new(),
            }),
            changed: Condition::default(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, ProgressState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` and wakes whoever it may concern.
    fn update(&self, change: impl FnOnce(&mut ProgressState)) {
        let mut wake = Vec::new();
        {
            let mut state = self.lock();
            let visible_before = state.visible().offset;
            change(&mut state);
            // What is durable was written, and retention never starts the log past its
            // written end. (Durable may lag the start: retention can delete a sealed
            // segment of a `never` topic before any flush covered it.)
            debug_assert!(
                state.written.offset >= state.durable.offset,
                "{}: durable {} past written {}",
                self.name,
                state.durable.offset,
                state.written.offset
            );
            debug_assert!(
                state.written.offset >= state.log_start,
                "{}: log start {} past written {}",
                self.name,
                state.log_start,
                state.written.offset
            );
            // What readers saw stays visible (a consumer never sees an offset twice).
            debug_assert!(
                state.visible().offset >= visible_before,
                "{}: visible end went back from {} to {}",
                self.name,
                visible_before,
                state.visible().offset
            );
            let ended = state.poisoned.is_some() || state.closed;
            if ended || state.visible().offset != visible_before {
                wake.append(&mut state.data_wakers);
            }
            let durable = state.durable.offset;
            let failed_below = state.flush_failed.as_ref().map_or(0, |(below, _)| *below);
            let mut index = 0;
            while index < state.durable_wakers.len() {
                let offset = state.durable_wakers[index].0;
                if ended || offset < durable || offset < failed_below {
                    wake.push(state.durable_wakers.swap_remove(index).1);
                } else {
                    index += 1;
                }
            }
        }
        self.changed.notify_all();
        for waker in wake {
            waker.wake();
        }
    }

    pub fn set_written(&self, end: LogEnd) {
        self.update(|s| s.written = end);
    }

    pub fn set_durable(&self, end: LogEnd) {
        self.update(|s| {
            if end.offset >= s.durable.offset {
                s.durable = end;
            }
            if s.kept_visible
                .is_some_and(|kept| s.durable.offset >= kept.offset)
            {
                s.kept_visible = None;
            }
            if s.flush_failed
                .as_ref()
                .is_some_and(|(below, _)| s.durable.offset >= *below)
            {
                s.flush_failed = None;
            }
        });
    }

    /// A flush meant to make offsets below `below` durable failed before any fsync ran
    /// (`error`): their waiters fail with it, the partition is not poisoned, and a later
    /// flush that gets that far ends it.
    pub fn fail_flush(&self, below: u64, error: Error) {
        self.update(|s| {
            if s.durable.offset < below {
                s.flush_failed = Some((below, error));
            }
        });
    }

    /// The error a wait for `offset` to be durable ends with, if it ends now.
    fn durable_error(&self, state: &ProgressState, offset: u64) -> Option<Error> {
        if let Some(error) = self.ended_error(state) {
            return Some(error);
        }
        match &state.flush_failed {
            Some((below, error)) if offset < *below => Some(error.clone()),
            _ => None,
        }
    }

    pub fn set_log_start(&self, log_start: u64) {
        self.update(|s| s.log_start = s.log_start.max(log_start));
    }

    /// Readers see only durable data from now on (`true`), or all written data.
    /// Nothing they see goes back: a switch to durable-only keeps what they see now
    /// visible until the durable end passes it (returned: the end they see, so the
    /// caller can wait for a flush to cover it). A switch back shows the written end.
    pub fn set_durable_only(&self, durable_only: bool) -> LogEnd {
        let mut visible = LogEnd::default();
        self.update(|s| {
            visible = s.visible();
            s.kept_visible = (durable_only && visible.offset > s.durable.offset).then_some(visible);
            s.durable_only = durable_only;
        });
        visible
    }

    pub fn poison(&self, cause: String) {
        self.update(|s| {
            s.poisoned.get_or_insert(cause);
        });
    }

    pub fn close(&self) {
        self.update(|s| s.closed = true);
    }

    /// Closes it because its topic was deleted: waiters and later calls are told so.
    pub fn close_deleted(&self) {
        self.update(|s| {
            s.closed = true;
            s.deleted = true;
        });
    }

    /// Why a closed partition refuses a call.
    pub fn closed_error(&self) -> Error {
        self.closed_error_in(&self.lock())
    }

    pub fn closed_error_in(&self, state: &ProgressState) -> Error {
        if let Some(error) = &state.unavailable {
            return error.clone();
        }
        if state.deleted {
            Error::TopicDeleted {
                partition: self.name.clone(),
            }
        } else {
            Error::Closed
        }
    }

    /// Marks it as never opened: recovery refused it for `error`.
    pub fn set_unavailable(&self, error: Error) {
        self.update(|s| {
            s.unavailable = Some(error);
            s.closed = true;
        });
    }

    fn ended_error(&self, state: &ProgressState) -> Option<Error> {
        if let Some(error) = &state.unavailable {
            return Some(error.clone());
        }
        if let Some(cause) = &state.poisoned {
            return Some(Error::Poisoned {
                partition: self.name.clone(),
                cause: cause.clone(),
            });
        }
        state.closed.then(|| self.closed_error_in(state))
    }

    fn poll_durable(&self, offset: u64, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut state = self.lock();
        if state.durable.offset > offset {
            return Poll::Ready(Ok(()));
        }
        if let Some(error) = self.durable_error(&state, offset) {
            return Poll::Ready(Err(error));
        }
        let known = state
            .durable_wakers
            .iter()
            .any(|(o, w)| *o == offset && w.will_wake(cx.waker()));
        if !known {
            state.durable_wakers.push((offset, cx.waker().clone()));
        }
        Poll::Pending
    }

    fn poll_data(&self, offset: u64, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if state.visible().offset > offset || state.poisoned.is_some() || state.closed {
            return Poll::Ready(());
        }
        if !state.data_wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.data_wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Blocks until `offset` is durable, the partition is poisoned or closed.
    pub fn wait_durable_blocking(&self, offset: u64) -> Result<()> {
        let mut state = self.lock();
        loop {
            if state.durable.offset > offset {
                return Ok(());
            }
            if let Some(error) = self.durable_error(&state, offset) {
                return Err(error);
            }
            state = self.changed.wait(state);
        }
    }

    /// Blocks until a record at `offset` is visible or `timeout` passes; true if it is.
    pub fn wait_for_data_blocking(&self, offset: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            if state.visible().offset > offset {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || state.poisoned.is_some() || state.closed {
                return false;
            }
            state = self.changed.wait_timeout(state, deadline - now);
        }
    }
}

/// Resolves when the given offset is durable (`Ok`), or the partition is poisoned or
/// closed first, or the flush that was to cover it failed before its fsync (`Err`).
#[derive(Debug)]
#[must_use = "a future does nothing unless polled"]
pub struct WaitDurable {
    pub(crate) progress: Arc<Progress>,
    pub(crate) offset: u64,
}

impl Future for WaitDurable {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.progress.poll_durable(self.offset, cx)
    }
}

/// Resolves when a record at the given offset is visible to readers, or the
/// partition is poisoned or closed (then a read says why).
#[derive(Debug)]
#[must_use = "a future does nothing unless polled"]
pub struct WaitForData {
    pub(crate) progress: Arc<Progress>,
    pub(crate) offset: u64,
}

impl Future for WaitForData {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.progress.poll_data(self.offset, cx)
    }
}

/// Resolves when any of its [`WaitForData`]s does (never when it has none): a reader
/// of several partitions waits for the first with data at its position.
#[derive(Debug)]
#[must_use = "a future does nothing unless polled"]
pub struct WaitForAnyData(Vec<WaitForData>);

impl WaitForAnyData {
    pub fn new(waits: impl IntoIterator<Item = WaitForData>) -> Self {
        WaitForAnyData(waits.into_iter().collect())
    }
}

impl Future for WaitForAnyData {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Pending only once every one was polled, so each wakes this task.
        for wait in &mut self.0 {
            if Pin::new(wait).poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn end(offset: u64) -> LogEnd {
        LogEnd {
            offset,
            segment_base: 0,
            position: offset * 10,
        }
    }

    /// Any of several partitions' data: pending until one has data at its offset,
    /// and then woken; never with none.
    #[test]
    fn wait_for_any_data_is_over_when_one_partition_has_data() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::task::Wake;
        #[derive(Default)]
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let woken = Arc::new(Count::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let partitions: Vec<_> = (0..3)
            .map(|i| Progress::new(format!("t-{i}"), end(4), 0, false))
            .collect();
        let wait_at = |offsets: [u64; 3]| {
            WaitForAnyData::new(partitions.iter().zip(offsets).map(|(progress, offset)| {
                WaitForData {
                    progress: progress.clone(),
                    offset,
                }
            }))
        };
        let mut none = WaitForAnyData::new(Vec::new());
        assert!(Pin::new(&mut none).poll(&mut cx).is_pending());
        let mut waiting = wait_at([4, 4, 4]);
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_pending());
        // At an offset already visible: over at once.
        assert!(Pin::new(&mut wait_at([4, 3, 4])).poll(&mut cx).is_ready());
        // The last partition gets data: the waiting task is woken, and the wait is over.
        partitions[2].set_written(end(5));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(Pin::new(&mut waiting).poll(&mut cx).is_ready());
    }

    #[test]
    fn updates_wake_blocked_threads_and_skip_the_notify_without_them() {
        let progress = Progress::new("t-0".into(), end(0), 0, false);
        // Nobody blocked: updates only change the state.
        progress.set_written(end(3));
        progress.set_durable(end(2));
        assert_eq!(progress.changed.blocked(), 0);

        let (done_tx, done) = mpsc::channel();
        let durable = {
            let (progress, done_tx) = (progress.clone(), done_tx.clone());
            std::thread::spawn(move || {
                done_tx.send(("durable", progress.wait_durable_blocking(4).is_ok()))
            })
        };
        let data = {
            let progress = progress.clone();
            std::thread::spawn(move || {
                let seen = progress.wait_for_data_blocking(5, Duration::from_secs(60));
                done_tx.send(("data", seen))
            })
        };
        progress.changed.until_blocked(2);
        // Not far enough for either: both stay blocked.
        progress.set_written(end(4));
        progress.set_durable(end(4));
        assert!(done.recv_timeout(Duration::from_millis(50)).is_err());
        progress.changed.until_blocked(2);
        progress.set_written(end(6));
        assert_eq!(
            done.recv_timeout(Duration::from_secs(10)),
            Ok(("data", true))
        );
        progress.set_durable(end(5));
        assert_eq!(
            done.recv_timeout(Duration::from_secs(10)),
            Ok(("durable", true))
        );
        durable.join().unwrap().unwrap();
        data.join().unwrap().unwrap();
        assert_eq!(progress.changed.blocked(), 0);
    }
}
