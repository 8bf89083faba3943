//! The group-commit flusher: a small pool of threads that fsync partitions.
//!
//! An append under `fsync = always` queues its partition (once: a queued partition is
//! not queued again) and returns; a flusher thread takes it, fsyncs everything written
//! so far and wakes every waiter the fsync covered. While one fsync runs, further
//! appends pile up and the next fsync covers them all, so durable throughput grows
//! with concurrency instead of being capped at the disk's fsyncs per second. Only
//! these threads (and a partition's final close) call fdatasync on segment files.

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use crate::error::{IoContext, Result};

/// What the flusher threads flush: a partition (its own module implements this, so
/// the flusher does not depend on it).
pub(crate) trait Flush: Send + Sync {
    /// One group commit. A failure has already been handled (the flushed thing is
    /// poisoned and its waiters woken with the error); the flusher only moves on.
    fn flush_now(&self);
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
                .spawn(move || {
                    while let Ok(Job::Flush(target)) = receiver.recv() {
                        target.flush_now();
                    }
                })
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

impl Drop for Flusher {
    fn drop(&mut self) {
        self.shutdown();
    }
}
