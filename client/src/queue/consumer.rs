//! A queue member on the `Queues.Consume` stream, with credit given back as
//! deliveries are settled and a reconnect with backoff when the broker goes away.
//!
//! A background task (the driver) owns the stream: it sends the Open, credit and the
//! settlements, and reads the broker's events. Deliveries go to the reader through a
//! buffer that never holds more than the credit window (the broker sends no more);
//! each settlement is sent with a request id, and the Settled answer carrying that id
//! wakes whoever settled. Every time the stream breaks the session number goes up:
//! deliveries of an older session are stale (the broker took them back when the
//! stream ended), and settling one fails with [`Error::LeaseLost`] without a round
//! trip.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tidelog_proto::v1::SettlementOutcome;
use tidelog_proto::v1::queue_consume_request::{Credit, Open, Request, Settle};
use tidelog_proto::v1::queue_consume_response::{Event, Opened};
use tidelog_proto::v1::{QueueConfig, QueueConsumeRequest, QueueConsumeResponse};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

use super::route::{Command, Link, lease_lost};
use super::{Delivery, Settler};
use crate::backoff::Backoff;
use crate::connection::Client;
use crate::error::{Error, Result, retryable_status};

/// Most credit a consumer may give at once ([`QueueConsumerOptions::credit`]): each
/// unit is a delivery (up to a whole message) held in memory.
pub(crate) const CREDIT_MAX: u32 = 65_536;
/// Requests (credit, settlements) queued for the stream before the driver waits.
const REQUESTS_QUEUED_MAX: usize = 256;
/// Settlements queued for the driver before a settling caller waits.
const COMMANDS_QUEUED_MAX: usize = 1024;

/// How a [`QueueConsumer`] consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueConsumerOptions {
    /// Free-form name shown by `DescribeQueue` (and `tidelog queue describe`).
    pub client_id: String,
    /// The window: most deliveries held unsettled at once (1 to 65,536, more counts as
    /// 65,536; default 100). Each final settlement (ack, nack, term; not an
    /// extension) frees its credit once the broker answered it, and freed credit goes
    /// back to the broker once half the window is free: the broker then delivers
    /// half a window in one round rather than one message a settlement (a consumer
    /// that settles one delivery at a time acks more a second), while it always has
    /// credit left to deliver with when the consumer holds nothing. The queue's
    /// `max_unacked_per_member` applies too.
    pub credit: u32,
    /// Most deliveries in all (`None`: no limit): credit never goes past it, so
    /// nothing is delivered that the caller will not take.
    pub limit: Option<u64>,
    /// Open the stream again with backoff when it breaks (default true); false: the
    /// break is the error of the next read.
    pub reconnect: bool,
}

impl Default for QueueConsumerOptions {
    fn default() -> Self {
        QueueConsumerOptions {
            client_id: "tidelog-client".into(),
            credit: 100,
            limit: None,
            reconnect: true,
        }
    }
}

impl QueueConsumerOptions {
    /// The defaults, with `client_id`.
    pub fn new(client_id: impl Into<String>) -> QueueConsumerOptions {
        QueueConsumerOptions {
            client_id: client_id.into(),
            ..QueueConsumerOptions::default()
        }
    }
}

/// One thing a [`QueueConsumer`] tells its reader ([`QueueConsumer::next_event`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum QueueEvent {
    /// Deliveries the broker sent together (at least one).
    Deliveries(Vec<Delivery>),
    /// The stream broke (the broker restarted or stopped, the connection dropped): the
    /// consumer opens it again with backoff. Deliveries held now are taken back by the
    /// broker and delivered again; settling one fails with [`Error::LeaseLost`].
    Disconnected { error: Error },
    /// The stream is open again after [`QueueEvent::Disconnected`], with a new member
    /// id.
    Reconnected { member_id: String },
}

/// A member of a queue on one `Queues.Consume` stream: the broker pushes deliveries
/// as credit allows, and the consumer gives credit back as they are settled (half a
/// window at a time), so at most [`QueueConsumerOptions::credit`] are held at once (back-pressure: a caller
/// that does not settle gets no more). On a queue on a topic pattern each delivery
/// names its topic ([`crate::Message::topic`]).
///
/// Settling ([`Delivery::ack`], [`Delivery::nack`], [`Delivery::in_progress`],
/// [`Delivery::term`], [`Delivery::settle`], [`Delivery::ack_all`]) travels on the
/// stream and returns once the broker has made the outcome durable. Deliveries can be
/// settled from other tasks, in any order, while the consumer reads on.
///
/// When the broker goes away the consumer reconnects with backoff
/// ([`QueueEvent::Disconnected`], then [`QueueEvent::Reconnected`]); what it held is
/// delivered again (attempt + 1) and settling an old delivery fails with
/// [`Error::LeaseLost`]. Delivery is at-least-once: a handler should be idempotent, or
/// check [`Delivery::attempt`].
///
/// ```no_run
/// # async fn example() -> Result<(), tidelog_client::Error> {
/// use std::time::Duration;
/// use tidelog_client::{Client, Error, QueueConsumer, QueueConsumerOptions};
/// let client = Client::connect("http://127.0.0.1:7420").await?;
/// let options = QueueConsumerOptions { credit: 64, ..QueueConsumerOptions::new("mailer-1") };
/// let mut consumer = QueueConsumer::open(&client, "emails", options).await?;
/// loop {
///     let delivery = consumer.next().await?;
///     let settled = match delivery.message().value.as_ref() {
///         b"" => delivery.term("empty body").await,
///         body if body.starts_with(b"later") => {
///             delivery.nack(Some(Duration::from_secs(30)), "not yet").await
///         }
///         _ => delivery.ack().await,
///     };
///     match settled {
///         Ok(()) => {}
///         // The broker restarted meanwhile: the message comes again.
///         Err(Error::LeaseLost { .. }) => {}
///         Err(error) => return Err(error),
///     }
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct QueueConsumer {
    queue: String,
    member_id: String,
    config: QueueConfig,
    shared: Arc<Shared>,
    /// Dropping it ends the stream at once; [`QueueConsumer::close`] sends on it.
    close: Option<oneshot::Sender<()>>,
    driver: Option<tokio::task::JoinHandle<()>>,
    /// Deliveries of an event [`QueueConsumer::next`] has not returned yet.
    ready: VecDeque<Delivery>,
    /// The error that ended the consumer, returned again by later reads.
    failed: Option<Error>,
}

impl QueueConsumer {
    /// Opens a `Consume` stream on `queue` and waits for the broker's answer.
    ///
    /// Errors: [`Error::NotFound`] for an unknown queue; the connection's errors
    /// ([`Error::is_retryable`] tells whether trying again later can help).
    pub async fn open(
        client: &Client,
        queue: &str,
        options: QueueConsumerOptions,
    ) -> Result<QueueConsumer> {
        let window = options.credit.clamp(1, CREDIT_MAX);
        let mut credit_left = options.limit.unwrap_or(u64::MAX);
        let first = take_credit(&mut credit_left, u64::from(window));
        let (session, opened) = open_session(client, queue, &options.client_id, first).await?;
        let shared = Arc::new(Shared::default());
        let (commands_tx, commands) = mpsc::channel(COMMANDS_QUEUED_MAX);
        let (close_tx, close) = oneshot::channel();
        let driver = Driver {
            client: client.clone(),
            queue: queue.to_string(),
            client_id: options.client_id.clone(),
            window,
            reconnect: options.reconnect,
            shared: shared.clone(),
            commands_tx: commands_tx.clone(),
            commands,
            close,
            closing: false,
            done: false,
            backoff: Backoff::default(),
            session: Some(session),
            credit_left,
            next_request_id: 1,
            pending: HashMap::new(),
            topic: Arc::from(""),
        };
        let driver = tokio::spawn(driver.run());
        Ok(QueueConsumer {
            queue: queue.to_string(),
            member_id: opened.member_id,
            config: opened.config.unwrap_or_default(),
            shared,
            close: Some(close_tx),
            driver: Some(driver),
            ready: VecDeque::new(),
            failed: None,
        })
    }

    /// The queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The id the broker gave this member (a new one after each reconnect).
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The queue's effective config as the broker sent it when the stream opened.
    pub fn config(&self) -> &QueueConfig {
        &self.config
    }

    /// The next [`QueueEvent`]. Fails for what reconnecting cannot fix (the queue was
    /// deleted, the token was refused) and, without
    /// [`QueueConsumerOptions::reconnect`], when the stream breaks ([`Error::Closed`]
    /// when the broker ended it without an error). Cancel-safe.
    pub async fn next_event(&mut self) -> Result<QueueEvent> {
        loop {
            if let Some(error) = &self.failed {
                return Err(error.clone());
            }
            let item = lock(&self.shared.items).pop_front();
            match item {
                Some(Item::Deliveries(session, deliveries)) => {
                    if session == self.shared.session.load(Ordering::Acquire) {
                        return Ok(QueueEvent::Deliveries(deliveries));
                    }
                }
                Some(Item::Disconnected(error)) => {
                    return Ok(QueueEvent::Disconnected { error });
                }
                Some(Item::Reconnected(opened)) => {
                    self.member_id.clone_from(&opened.member_id);
                    self.config = opened.config.unwrap_or_default();
                    return Ok(QueueEvent::Reconnected {
                        member_id: opened.member_id,
                    });
                }
                Some(Item::Failed(error)) => {
                    self.failed = Some(error.clone());
                    return Err(error);
                }
                None => self.shared.ready.notified().await,
            }
        }
    }

    /// The next delivery (reconnecting as needed). Cancel-safe.
    pub async fn next(&mut self) -> Result<Delivery> {
        loop {
            while let Some(delivery) = self.ready.pop_front() {
                if self.is_current(&delivery) {
                    return Ok(delivery);
                }
            }
            if let QueueEvent::Deliveries(deliveries) = self.next_event().await? {
                self.ready.extend(deliveries);
            }
        }
    }

    /// The next deliveries the broker sent together (at least one; reconnecting as
    /// needed): the ones [`QueueConsumer::next`] has not returned yet first.
    /// Cancel-safe.
    pub async fn next_batch(&mut self) -> Result<Vec<Delivery>> {
        let current = self.shared.session.load(Ordering::Acquire);
        self.ready.retain(|d| session_of(d) == Some(current));
        if !self.ready.is_empty() {
            return Ok(self.ready.drain(..).collect());
        }
        loop {
            if let QueueEvent::Deliveries(deliveries) = self.next_event().await? {
                return Ok(deliveries);
            }
        }
    }

    fn is_current(&self, delivery: &Delivery) -> bool {
        session_of(delivery) == Some(self.shared.session.load(Ordering::Acquire))
    }

    /// No more credit from now on: the broker sends what it owes and nothing more.
    /// Settle what is held, then [`QueueConsumer::close`].
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::Release);
    }

    /// Ends the stream once every settlement sent was answered (without more
    /// credit). Deliveries still held are delivered again by the broker (after the
    /// queue's backoff). Dropping the consumer ends the stream at once instead.
    pub async fn close(mut self) {
        self.drain();
        if let Some(close) = self.close.take() {
            let _ = close.send(());
        }
        if let Some(driver) = self.driver.take() {
            let _ = driver.await;
        }
    }
}

/// The session a stream delivery came on.
fn session_of(delivery: &Delivery) -> Option<u64> {
    match &delivery.settler {
        Settler::Stream(link) => Some(link.session),
        Settler::Worker(_) => None,
    }
}

/// What the driver shares with the reader.
#[derive(Debug, Default)]
struct Shared {
    /// Events for the reader; deliveries of at most one credit window.
    items: Mutex<VecDeque<Item>>,
    /// Rung after each push.
    ready: Notify,
    /// The current session number: deliveries of another one are stale.
    session: AtomicU64,
    /// [`QueueConsumer::drain`] was called: no more credit.
    draining: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug)]
enum Item {
    Deliveries(u64, Vec<Delivery>),
    Disconnected(Error),
    Reconnected(Opened),
    Failed(Error),
}

/// A settlement sent and not answered yet.
#[derive(Debug)]
struct Pending {
    frees: Vec<u32>,
    reply: oneshot::Sender<Result<Vec<SettlementOutcome>>>,
}

/// An open stream.
#[derive(Debug)]
struct Session {
    requests: mpsc::Sender<QueueConsumeRequest>,
    events: Streaming<QueueConsumeResponse>,
    /// Credit given on this stream, deliveries received on it, and those received
    /// and not settled for good yet.
    granted: u64,
    received: u64,
    held: u64,
    /// Credit freed by settlements and not given back yet (see [`Driver::credit`]).
    owed: u64,
}

/// Takes up to `want` from what the limit leaves.
fn take_credit(left: &mut u64, want: u64) -> u64 {
    let take = want.min(*left);
    if *left != u64::MAX {
        *left -= take;
    }
    take
}

/// Opens a stream with `credit` and waits for the Opened answer.
async fn open_session(
    client: &Client,
    queue: &str,
    client_id: &str,
    credit: u64,
) -> Result<(Session, Opened)> {
    let (requests, rx) = mpsc::channel(REQUESTS_QUEUED_MAX);
    let open = QueueConsumeRequest {
        request: Some(Request::Open(Open {
            queue: queue.to_string(),
            client_id: client_id.to_string(),
            credit: u32::try_from(credit).unwrap_or(u32::MAX),
        })),
    };
    // The broker reads the Open before it answers the call.
    requests.send(open).await.map_err(|_| Error::Closed)?;
    let mut events = client
        .queues()
        .consume(ReceiverStream::new(rx))
        .await
        .map_err(|status| Error::from_status("Consume", None, &status))?
        .into_inner();
    loop {
        let response = events
            .message()
            .await
            .map_err(|status| Error::from_status("Consume", None, &status))?;
        match response {
            Some(QueueConsumeResponse {
                event: Some(Event::Opened(opened)),
            }) => {
                let session = Session {
                    requests,
                    events,
                    granted: credit,
                    received: 0,
                    held: 0,
                    owed: 0,
                };
                return Ok((session, opened));
            }
            Some(_) => {}
            None => return Err(Error::Closed),
        }
    }
}

/// One thing the driver waited for.
enum Step {
    Close(bool),
    Command(Option<Command>),
    Message(std::result::Result<Option<QueueConsumeResponse>, tonic::Status>),
}

/// The task that owns the stream.
struct Driver {
    client: Client,
    queue: String,
    client_id: String,
    window: u32,
    reconnect: bool,
    shared: Arc<Shared>,
    /// For the deliveries' links.
    commands_tx: mpsc::Sender<Command>,
    commands: mpsc::Receiver<Command>,
    close: oneshot::Receiver<()>,
    /// [`QueueConsumer::close`] was called: end once nothing is pending.
    closing: bool,
    done: bool,
    backoff: Backoff,
    session: Option<Session>,
    /// Credit the limit still allows (u64::MAX: no limit).
    credit_left: u64,
    next_request_id: u64,
    pending: HashMap<u64, Pending>,
    /// The topic of the latest delivery, shared by the messages of that topic.
    topic: Arc<str>,
}

impl Driver {
    async fn run(mut self) {
        while !self.done {
            if self.session.is_none() {
                self.reconnect_step().await;
                continue;
            }
            if self.closing && self.pending.is_empty() {
                break;
            }
            let step = {
                let Some(session) = self.session.as_mut() else {
                    continue;
                };
                tokio::select! {
                    close = &mut self.close, if !self.closing => Step::Close(close.is_ok()),
                    command = self.commands.recv() => Step::Command(command),
                    message = session.events.message() => Step::Message(message),
                }
            };
            match step {
                Step::Close(true) => self.closing = true,
                // The consumer was dropped.
                Step::Close(false) | Step::Command(None) => break,
                Step::Command(Some(command)) => self.command(command).await,
                Step::Message(Ok(Some(response))) => self.response(response).await,
                Step::Message(Ok(None)) => self.lost(Error::Closed),
                Step::Message(Err(status)) => {
                    let error = Error::from_status("Consume", None, &status);
                    if retryable_status(&status) {
                        tracing::debug!(%status, queue = self.queue, "queue stream broke");
                        self.lost(error);
                    } else {
                        self.end(error);
                    }
                }
            }
        }
        self.fail_pending(super::route::UNANSWERED_CLOSED);
    }

    /// Without a stream: wait the backoff (answering settlements of the lost
    /// session meanwhile), then open one again.
    async fn reconnect_step(&mut self) {
        let wait = self.backoff.next_delay();
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => break,
                _ = &mut self.close, if !self.closing => {
                    self.done = true;
                    return;
                }
                command = self.commands.recv() => match command {
                    Some(command) => refuse(command),
                    None => {
                        self.done = true;
                        return;
                    }
                },
            }
        }
        let credit = if self.shared.draining.load(Ordering::Acquire) {
            0
        } else {
            take_credit(&mut self.credit_left, u64::from(self.window))
        };
        match open_session(&self.client, &self.queue, &self.client_id, credit).await {
            Ok((session, opened)) => {
                self.backoff.reset();
                self.session = Some(session);
                self.push(Item::Reconnected(opened));
            }
            Err(error) => {
                self.give_back_credit(credit);
                if matches!(error, Error::Closed) || error.is_retryable() {
                    tracing::debug!(%error, queue = self.queue, "reopening the queue stream failed; retrying");
                } else {
                    self.end(error);
                }
            }
        }
    }

    fn give_back_credit(&mut self, credit: u64) {
        if self.credit_left != u64::MAX {
            self.credit_left = self.credit_left.saturating_add(credit);
        }
    }

    fn push(&self, item: Item) {
        lock(&self.shared.items).push_back(item);
        self.shared.ready.notify_one();
    }

    fn current(&self) -> u64 {
        self.shared.session.load(Ordering::Acquire)
    }

    async fn command(&mut self, command: Command) {
        let current = self.current();
        let Some(session) = self.session.as_mut().filter(|_| command.session == current) else {
            refuse(command);
            return;
        };
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let request = QueueConsumeRequest {
            request: Some(Request::Settle(Settle {
                request_id,
                settlements: command.settlements,
            })),
        };
        if session.requests.send(request).await.is_err() {
            refuse_reply(command.reply);
            return;
        }
        self.pending.insert(
            request_id,
            Pending {
                frees: command.frees,
                reply: command.reply,
            },
        );
    }

    async fn response(&mut self, response: QueueConsumeResponse) {
        match response.event {
            Some(Event::Deliveries(deliveries)) => {
                let session_number = self.current();
                let Some(session) = self.session.as_mut() else {
                    return;
                };
                let count = deliveries.deliveries.len() as u64;
                session.received = session.received.saturating_add(count);
                if session.received > session.granted {
                    let message = format!(
                        "the broker sent {} deliveries for {} credit: check that tidelogd and tidelog-client are the same version",
                        session.received, session.granted
                    );
                    self.end(Error::Broker {
                        rpc: "Consume",
                        code: Code::Internal,
                        message,
                    });
                    return;
                }
                let link = Link {
                    commands: self.commands_tx.clone(),
                    session: session_number,
                };
                let list: Vec<Delivery> = deliveries
                    .deliveries
                    .into_iter()
                    .filter_map(|mut d| {
                        // One shared topic name per run of deliveries of one topic,
                        // not one allocation per message.
                        let named = d.message.as_mut().map(|m| std::mem::take(&mut m.topic));
                        let topic = match named {
                            Some(name) if *self.topic != *name => {
                                self.topic = Arc::from(name);
                                self.topic.clone()
                            }
                            _ => self.topic.clone(),
                        };
                        Delivery::new(Settler::Stream(link.clone()), &topic, d)
                    })
                    .collect();
                session.held = session.held.saturating_add(list.len() as u64);
                if !list.is_empty() {
                    self.push(Item::Deliveries(session_number, list));
                }
            }
            Some(Event::Settled(settled)) => {
                let Some(pending) = self.pending.remove(&settled.request_id) else {
                    tracing::debug!(
                        request_id = settled.request_id,
                        "a Settled answer for no request of this consumer"
                    );
                    return;
                };
                let outcomes = settled.outcomes;
                let freed: u64 = if outcomes.len() == pending.frees.len() {
                    outcomes
                        .iter()
                        .zip(&pending.frees)
                        .filter(|(o, _)| Code::from_i32(o.code) != Code::InvalidArgument)
                        .map(|(_, &frees)| u64::from(frees))
                        .sum()
                } else {
                    0
                };
                let _ = pending.reply.send(Ok(outcomes));
                if let Some(session) = self.session.as_mut() {
                    session.held = session.held.saturating_sub(freed);
                }
                self.credit(freed).await;
            }
            Some(Event::Opened(_)) | None => {}
        }
    }

    /// Gives `freed` credit back, within the limit, unless draining: once the credit
    /// freed and not given back yet reaches half the window (so the broker, which
    /// holds the rest, can always deliver while the consumer holds nothing).
    async fn credit(&mut self, freed: u64) {
        if freed == 0 || self.closing || self.shared.draining.load(Ordering::Acquire) {
            return;
        }
        let threshold = u64::from(self.window / 2).max(1);
        let Some(session) = self.session.as_mut() else {
            return;
        };
        session.owed = session.owed.saturating_add(freed);
        if session.owed < threshold {
            return;
        }
        let owed = std::mem::take(&mut session.owed);
        let more = take_credit(&mut self.credit_left, owed.min(u64::from(u32::MAX)));
        if more == 0 {
            return;
        }
        session.granted = session.granted.saturating_add(more);
        let request = QueueConsumeRequest {
            request: Some(Request::Credit(Credit {
                messages: u32::try_from(more).unwrap_or(u32::MAX),
            })),
        };
        // A stream that ended is noticed by the read that follows.
        let _ = session.requests.send(request).await;
    }

    fn fail_pending(&mut self, reason: &str) {
        for (_, pending) in self.pending.drain() {
            let _ = pending.reply.send(Err(lease_lost(reason)));
        }
    }

    /// The stream is gone: its deliveries are stale, its pending settlements unknown.
    fn drop_session(&mut self) {
        if let Some(session) = self.session.take() {
            // Credit not used, and deliveries the broker will send again, count again.
            let unused = session.granted.saturating_sub(session.received);
            self.give_back_credit(unused.saturating_add(session.held));
        }
        self.shared.session.fetch_add(1, Ordering::AcqRel);
        self.fail_pending(super::route::UNANSWERED_BROKEN);
        // Stale deliveries go; so do the news of an earlier break not read yet (the
        // reader learns of this one), so repeated breaks buffer nothing more.
        lock(&self.shared.items).retain(|item| {
            !matches!(
                item,
                Item::Deliveries(..) | Item::Disconnected(_) | Item::Reconnected(_)
            )
        });
    }

    /// The stream broke for a reason worth reconnecting for.
    fn lost(&mut self, error: Error) {
        if self.closing || !self.reconnect {
            self.end(error);
            return;
        }
        self.drop_session();
        self.push(Item::Disconnected(error));
    }

    /// The consumer cannot go on: the reader gets `error`.
    fn end(&mut self, error: Error) {
        self.drop_session();
        if !self.closing {
            self.push(Item::Failed(error));
        }
        self.done = true;
    }
}

fn refuse(command: Command) {
    refuse_reply(command.reply);
}

fn refuse_reply(reply: oneshot::Sender<Result<Vec<SettlementOutcome>>>) {
    let _ = reply.send(Err(lease_lost(super::route::NOT_SENT_BROKEN)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_never_goes_past_the_limit() {
        let mut left = 5;
        assert_eq!(take_credit(&mut left, 3), 3);
        assert_eq!(take_credit(&mut left, 3), 2);
        assert_eq!(take_credit(&mut left, 3), 0);
        let mut unlimited = u64::MAX;
        assert_eq!(take_credit(&mut unlimited, 1000), 1000);
        assert_eq!(unlimited, u64::MAX);
    }

    #[tokio::test]
    async fn a_delivery_of_a_closed_consumer_has_lost_its_lease() {
        let link = Link::detached();
        let error = link.settle(Vec::new(), Vec::new()).await.unwrap_err();
        assert!(matches!(error, Error::LeaseLost { .. }), "{error}");
        assert!(error.to_string().contains("delivers the message again"));
    }

    /// A settlement sent and left unanswered (the stream broke, or the consumer
    /// closed) may have been applied: the text says so, and does not also promise a
    /// redelivery that an applied ack never gets.
    #[test]
    fn a_lease_lost_after_the_settlement_was_sent_promises_no_redelivery() {
        for reason in [
            super::super::route::UNANSWERED_BROKEN,
            super::super::route::UNANSWERED_CLOSED,
        ] {
            let text = lease_lost(reason).to_string();
            assert!(text.contains("may or may not have been applied"), "{text}");
            assert!(text.contains("not delivered again"), "{text}");
            assert!(!text.contains("drop this delivery"), "{text}");
        }
        for reason in [
            super::super::route::NOT_SENT_BROKEN,
            super::super::route::NOT_SENT_CLOSED,
        ] {
            let text = lease_lost(reason).to_string();
            assert!(!text.contains("may or may not"), "{text}");
            assert!(text.contains("delivers the message again"), "{text}");
        }
    }
}
