//! A short sanity measure of the producer and a batch-form subscription: publishes N
//! records of S bytes (keyless, so the sticky partitioner fills whole batches), then
//! reads them back, printing rates and this process's CPU per message. Not a benchmark
//! (`tidelog bench` and BENCHMARKS.md are): one client, one run.
//!
//! ```text
//! cargo run --release -p tidelog-client --example throughput -- http://127.0.0.1:7420 tp 1000000 100 [zstd] [written]
//! ```
//! Creates the topic (1 partition, fsync always) if it does not exist.

use std::time::Instant;

use tidelog_client::proto::TopicConfig;
use tidelog_client::{
    Ack, Client, Compression, Error, Producer, ProducerConfig, Record, StartAt, SubscribeOptions,
    Subscription,
};

fn cpu() -> f64 {
    tidelog_storage::procstat::cpu_seconds(None).unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args
        .first()
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:7420".into());
    let topic = args.get(1).cloned().unwrap_or_else(|| "tp".into());
    let count: usize = args.get(2).map_or(Ok(1_000_000), |n| n.parse())?;
    let size: usize = args.get(3).map_or(Ok(100), |n| n.parse())?;
    let zstd = args.iter().any(|a| a == "zstd");
    let ack = if args.iter().any(|a| a == "written") {
        Ack::Written
    } else {
        Ack::Durable
    };

    let client = Client::connect(&url).await?;
    match client.create_topic(&topic, 1, TopicConfig::default()).await {
        Ok(_)
        | Err(Error::Broker {
            code: tonic::Code::AlreadyExists,
            ..
        }) => {}
        Err(error) => return Err(error.into()),
    }
    let start_offset = client.describe_topic(&topic).await?.partitions[0].end_offset;
    let config = ProducerConfig {
        compression: if zstd {
            Compression::Zstd
        } else {
            Compression::None
        },
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, config);
    let value = bytes::Bytes::from(vec![b'x'; size]);
    let (cpu0, t0) = (cpu(), Instant::now());
    let mut acks = std::collections::VecDeque::new();
    for _ in 0..count {
        acks.push_back(
            producer
                .send(Record::new(&topic, value.clone()).ack(ack))
                .await?,
        );
        // Keep the futures bounded: resolve the oldest once many are pending.
        while acks.len() > 100_000 {
            if let Some(front) = acks.pop_front() {
                front.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    let (elapsed, cpu_used) = (t0.elapsed(), cpu() - cpu0);
    println!(
        "produce: {count} x {size} B ({ack:?}{}) in {elapsed:.2?}: {:.0} msg/s, client CPU {:.0} ns/msg",
        if zstd { ", zstd" } else { "" },
        count as f64 / elapsed.as_secs_f64(),
        cpu_used * 1e9 / count as f64
    );
    producer.close().await?;

    let options = SubscribeOptions {
        start: StartAt::Offset(start_offset),
        max_batch_bytes: 4 << 20,
        ..SubscribeOptions::default()
    };
    let mut subscription = Subscription::open(&client, &topic, options).await?;
    let (cpu0, t0) = (cpu(), Instant::now());
    for _ in 0..count {
        subscription.next().await?;
    }
    let (elapsed, cpu_used) = (t0.elapsed(), cpu() - cpu0);
    println!(
        "consume: {count} in {elapsed:.2?}: {:.0} msg/s, client CPU {:.0} ns/msg",
        count as f64 / elapsed.as_secs_f64(),
        cpu_used * 1e9 / count as f64
    );
    Ok(())
}
