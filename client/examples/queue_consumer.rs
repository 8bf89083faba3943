//! A queue consumer on the `Consume` stream: creates queue `<topic>-jobs` if needed,
//! then, with at most 32 deliveries held at once, acks every delivery, nacks the ones
//! whose value contains "retry" (2 s later, up to the third attempt), dead-letters
//! those containing "poison", and extends the deadline of those containing "slow"
//! before acking them. It carries on across a broker restart: a delivery whose lease
//! was lost comes again. Ctrl-C stops it after settling what it holds.
//!
//! ```text
//! cargo run -p tidelog-client --example queue_consumer -- http://127.0.0.1:7420 demo
//! ```

use std::time::Duration;

use tidelog_client::proto::start_position::{Earliest, Position};
use tidelog_client::proto::{CreateQueueRequest, QueueConfig, StartPosition};
use tidelog_client::{
    Client, Delivery, Error, QueueConsumer, QueueConsumerOptions, QueueEvent, Settle, Settled,
};

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
    let options = QueueConsumerOptions {
        credit: 32,
        ..QueueConsumerOptions::new("example-queue-consumer")
    };
    let mut consumer = QueueConsumer::open(&client, &queue, options).await?;
    println!("member {} of {queue}", consumer.member_id());
    // One Ctrl-C listener for the whole run: made anew each turn, a Ctrl-C pressed
    // while a delivery is being handled would find no listener and be lost.
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let event = tokio::select! {
            event = consumer.next_event() => event?,
            _ = &mut ctrl_c => break,
        };
        match event {
            QueueEvent::Deliveries(deliveries) => {
                for delivery in deliveries {
                    match handle(&delivery).await {
                        Ok(settled) => println!(
                            "{}/{}@{} attempt {}: {settled:?}",
                            delivery.message().topic,
                            delivery.message().partition,
                            delivery.message().offset,
                            delivery.attempt()
                        ),
                        // The broker restarted meanwhile: the message comes again.
                        Err(Error::LeaseLost { reason }) => println!("lease lost: {reason}"),
                        Err(error) => return Err(error.into()),
                    }
                }
            }
            QueueEvent::Disconnected { error } => println!("lost the broker: {error}"),
            QueueEvent::Reconnected { member_id } => println!("back, as member {member_id}"),
            _ => {}
        }
    }
    // No more credit; the stream ends once every settlement was answered.
    consumer.close().await;
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
