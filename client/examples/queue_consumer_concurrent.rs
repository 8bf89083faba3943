//! The `queue_consumer` example with its deliveries handled concurrently: each
//! delivery is handled and settled on its own task, so the consumer does not wait for
//! one settlement's answer before the next (as a NATS JetStream consumer's `ack()`
//! or a RabbitMQ `basic.ack` does not). Up to 256 deliveries are held at once (the
//! credit window), and so up to 256 settlements are in flight on the one stream; the
//! broker settles those that arrive while it makes earlier ones durable together,
//! with one fsync. Each settlement still returns only once the broker answered it,
//! durably: an `Ok` is never taken back. Same handling as `queue_consumer` (ack;
//! "retry" nacked, "poison" dead-lettered, "slow" extended), same output.
//!
//! ```text
//! cargo run -p tidelog-client --example queue_consumer_concurrent -- http://127.0.0.1:7420 demo
//! ```

use std::time::Duration;

use tidelog_client::proto::start_position::{Earliest, Position};
use tidelog_client::proto::{CreateQueueRequest, QueueConfig, StartPosition};
use tidelog_client::{
    Client, Delivery, Error, QueueConsumer, QueueConsumerOptions, QueueEvent, Settle, Settled,
};
use tokio::task::JoinSet;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7420".into());
    let topic = args.next().unwrap_or_else(|| "demo".into());
    let queue = format!("{topic}-jobs");

    let client = Client::connect(&url).await?;
    let created = client
        .queues()
        .create_queue(CreateQueueRequest {
            name: queue.clone(),
            topic: topic.clone(),
            start: Some(StartPosition {
                position: Some(Position::Earliest(Earliest {})),
            }),
            config: Some(QueueConfig::default()),
            ..Default::default()
        })
        .await;
    match created {
        Ok(_) => println!("created queue {queue}"),
        Err(status) if status.code() == tonic::Code::AlreadyExists => {}
        Err(status) => return Err(status.into()),
    }
    // The window bounds the deliveries held, so the tasks handling them: each final
    // settlement gives its credit back once answered.
    let options = QueueConsumerOptions {
        credit: 256,
        ..QueueConsumerOptions::new("example-queue-consumer-concurrent")
    };
    let mut consumer = QueueConsumer::open(&client, &queue, options).await?;
    println!("member {} of {queue}", consumer.member_id());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut handling: JoinSet<(Delivery, Result<Settled, Error>)> = JoinSet::new();
    loop {
        let event = tokio::select! {
            event = consumer.next_event() => event?,
            Some(done) = handling.join_next(), if !handling.is_empty() => {
                report(done?)?;
                continue;
            }
            _ = &mut ctrl_c => break,
        };
        match event {
            QueueEvent::Deliveries(deliveries) => {
                for delivery in deliveries {
                    handling.spawn(async move {
                        let settled = handle(&delivery).await;
                        (delivery, settled)
                    });
                }
            }
            QueueEvent::Disconnected { error } => println!("lost the broker: {error}"),
            QueueEvent::Reconnected { member_id } => println!("back, as member {member_id}"),
            _ => {}
        }
    }
    // Settle what is held, then no more credit; the stream ends once every
    // settlement was answered.
    while let Some(done) = handling.join_next().await {
        report(done?)?;
    }
    consumer.close().await;
    Ok(())
}

/// Prints a delivery's settlement; a lost lease is expected across a broker restart
/// (the message comes again), any other error ends the example.
fn report((delivery, settled): (Delivery, Result<Settled, Error>)) -> Result<(), Error> {
    match settled {
        Ok(settled) => println!(
            "{}/{}@{} attempt {}: {settled:?}",
            delivery.message().topic,
            delivery.message().partition,
            delivery.message().offset,
            delivery.attempt()
        ),
        Err(Error::LeaseLost { reason }) => println!("lease lost: {reason}"),
        Err(error) => return Err(error),
    }
    Ok(())
}

async fn handle(delivery: &Delivery) -> Result<Settled, Error> {
    let value = String::from_utf8_lossy(&delivery.message().value).into_owned();
    let settle = if value.contains("poison") {
        Settle::Term {
            reason: "the example dead-letters poison".into(),
        }
    } else if value.contains("retry") && delivery.attempt() < 3 {
        Settle::Nack {
            delay: Some(Duration::from_secs(2)),
            reason: "asked to retry".into(),
        }
    } else {
        if value.contains("slow") {
            delivery.in_progress(Some(Duration::from_secs(60))).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Settle::Ack
    };
    delivery.settle(settle).await
}
