//! Publishes N keyed records with the batching producer and prints where they went.
//!
//! ```text
//! cargo run -p tidelog-client --example produce -- http://127.0.0.1:7420 demo 1000
//! ```
//! Creates the topic (3 partitions) if it does not exist.

use std::time::Instant;

use tidelog_client::proto::TopicConfig;
use tidelog_client::{Client, Compression, Error, Producer, ProducerConfig, Record};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7420".into());
    let topic = args.next().unwrap_or_else(|| "demo".into());
    let count: usize = args.next().map_or(Ok(1000), |n| n.parse())?;

    let client = Client::connect(&url).await?;
    match client.create_topic(&topic, 3, TopicConfig::default()).await {
        Ok(_) => println!("created topic {topic}"),
        Err(Error::Broker {
            code: tonic::Code::AlreadyExists,
            ..
        }) => {}
        Err(error) => return Err(error.into()),
    }
    let config = ProducerConfig {
        compression: Compression::Zstd,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(&client, config);
    let started = Instant::now();
    let mut acks = Vec::with_capacity(count);
    for i in 0..count {
        let record = Record::new(&topic, format!("{{\"order\": {i}}}"))
            .key(format!("customer-{}", i % 10))
            .header("type", "order");
        acks.push(producer.send(record).await?);
    }
    let mut per_partition = std::collections::BTreeMap::new();
    for ack in acks {
        let delivered = ack.await?;
        *per_partition.entry(delivered.partition).or_insert(0u64) += 1;
    }
    producer.close().await?;
    println!(
        "{count} records acked (durable) in {:?}; per partition: {per_partition:?}",
        started.elapsed()
    );
    Ok(())
}
