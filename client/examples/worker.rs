//! A queue worker: creates queue `<topic>-work` if needed, then acks every delivery,
//! nacks the ones whose value contains "retry" (5 s later), and dead-letters those
//! containing "poison".
//!
//! ```text
//! cargo run -p tidelog-client --example worker -- http://127.0.0.1:7420 demo
//! ```

use std::time::Duration;

use tidelog_client::proto::start_position::{Earliest, Position};
use tidelog_client::proto::{CreateQueueRequest, QueueConfig, StartPosition};
use tidelog_client::{Client, QueueWorker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7420".into());
    let topic = args.next().unwrap_or_else(|| "demo".into());
    let queue = format!("{topic}-work");

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
    let worker = QueueWorker::new(&client, &queue, "example-worker");
    loop {
        for delivery in worker.receive(100, Duration::from_secs(10)).await? {
            let value = String::from_utf8_lossy(&delivery.message().value).into_owned();
            if value.contains("poison") {
                delivery.term("the example dead-letters poison").await?;
            } else if value.contains("retry") && delivery.attempt() < 3 {
                delivery
                    .nack(Some(Duration::from_secs(5)), "asked to retry")
                    .await?;
            } else {
                println!("attempt {}: {value}", delivery.attempt());
                delivery.ack().await?;
            }
        }
    }
}
