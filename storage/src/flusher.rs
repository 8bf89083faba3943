//! The group-commit flusher: a small pool of threads that fsync partitions.
//!
//! An append under `fsync = always` queues its partition (once: a queued partition is
//! not queued again) and returns; a flusher thread takes it, fsyncs everything written
//! so far and wakes every waiter the fsync covered. While one fsync runs, further
//! appends pile up and the next fsync covers them all, so durable throughput grows
//! with concurrency instead of being capped at the disk's fsyncs per second. Only
//! these threads, a partition's final close, and an append that rolls a partition
//! whose sealed segments pile up faster than they are fsynced (backpressure on that
//! partition's writers) call fdatasync on segment files.
//!
//! A flush that failed before any fsync ran (a file or directory could not be opened:
//! the process is out of file descriptors) asks to be tried again: the thread that ran
//! it runs it again after the delay the flushed thing gives.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::error::{IoContext, Result};

/// What the flusher threads flush: a partition (its own module implements this, so
/// the flusher does not depend on it).
pub(crate) trait Flush: Send + Sync {
    /// One group commit. A failure has already been handled (the flushed thing is
    /// poisoned, or its waiters failed, and woken with the error); the flusher only
    /// runs it again after the delay returned, if one is (with `retry` set).
    fn flush_now(&self, retry: bool) -> Option<Duration>;
}

enum Job {
    Flush(Arc<dyn Flush>),
    Stop,
}

/// Where partitions are queued for a flush.
#[derive(Clone)]
pub(crate) struct FlushQueue {
    sender: Sender<Job>,
}

impl std::fmt::Debug for FlushQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlushQueue").finish_non_exhaustive()
    }
}

impl FlushQueue {
    pub fn enqueue(&self, target: Arc<dyn Flush>) {
        // Fails only once the flusher has stopped; close() then flushes directly.
        let _ = self.sender.send(Job::Flush(target));
    }
}

/// The flusher threads.
#[derive(Debug)]
pub(crate) struct Flusher {
    queue: FlushQueue,
    threads: Vec<JoinHandle<()>>,
}

impl Flusher {
    pub fn start(threads: usize) -> Result<Self> {
        let (sender, receiver) = crossbeam_channel::unbounded::<Job>();
        let mut handles = Vec::new();
        for n in 0..threads.max(1) {
            let receiver = receiver.clone();
            let handle = std::thread::Builder::new()
                .name(format!("tidelog-flush-{n}"))
                .spawn(move || run(&receiver))
                .ctx(|| "starting a flusher thread")?;
            handles.push(handle);
        }
        Ok(Flusher {
            queue: FlushQueue { sender },
            threads: handles,
        })
    }

    pub fn queue(&self) -> FlushQueue {
        self.queue.clone()
    }

    /// Stops the threads after the flushes queued before this call.
    pub fn shutdown(&mut self) {
        for _ in 0..self.threads.len() {
            let _ = self.queue.sender.send(Job::Stop);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// One flusher thread: flushes what is queued, and runs again, when due, the flushes
/// that asked for it, until told to stop (retries pending then are dropped: the
/// store's close flushes every partition itself).
fn run(receiver: &Receiver<Job>) {
    let mut retries: Vec<(Instant, Arc<dyn Flush>)> = Vec::new();
    loop {
        let job = match retries.iter().map(|(at, _)| *at).min() {
            None => match receiver.recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            },
            Some(at) => match receiver.recv_deadline(at) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            },
        };
        let (due, retry) = match job {
            Some(Job::Stop) => return,
            Some(Job::Flush(target)) => (vec![target], false),
            None => {
                let now = Instant::now();
                let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut retries)
                    .into_iter()
                    .partition(|(at, _)| *at <= now);
                retries = later;
                (due.into_iter().map(|(_, target)| target).collect(), true)
            }
        };
        for target in due {
            if let Some(delay) = target.flush_now(retry) {
                retries.push((Instant::now() + delay, target));
            }
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shutdown();
    }
}
