//! Reads a topic, either as a plain subscription from the earliest message (batch form)
//! or, with a group id, as a consumer-group member committing after each message.
//! Runs until interrupted; survives broker restarts (a commit refused by a restarted
//! broker, or lost with the connection, is reported and reading goes on: the member
//! rejoins and what was not committed comes again).
//!
//! ```text
//! cargo run -p tidelog-client --example consume -- http://127.0.0.1:7420 demo
//! cargo run -p tidelog-client --example consume -- http://127.0.0.1:7420 demo billing
//! ```

use tidelog_client::{
    Client, Error, GroupMember, GroupOptions, Message, StartAt, SubscribeOptions, Subscription,
};

fn show(message: &Message) {
    println!(
        "{}/{}@{} key={:?} value={}",
        message.topic,
        message.partition,
        message.offset,
        message.key.as_deref().map(String::from_utf8_lossy),
        String::from_utf8_lossy(&message.value)
    );
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:7420".into());
    let topic = args.next().unwrap_or_else(|| "demo".into());
    let group = args.next();

    let client = Client::connect(&url).await?;
    match group {
        None => {
            let options = SubscribeOptions {
                start: StartAt::Earliest,
                ..SubscribeOptions::default()
            };
            let mut subscription = Subscription::open(&client, &topic, options).await?;
            loop {
                show(&subscription.next().await?);
            }
        }
        Some(group) => {
            let mut member = GroupMember::join(&client, &topic, GroupOptions::new(group)).await?;
            let (id, generation, partitions) = member.assignment();
            println!("joined as {id} (generation {generation}), partitions {partitions:?}");
            loop {
                show(&member.next().await?);
                match member.commit().await {
                    Ok(()) => {}
                    // The broker went away or restarted, or the group rebalanced: the
                    // next call rejoins (or reads on to the new assignment) by itself.
                    Err(error)
                        if error.is_retryable() || matches!(error, Error::Rebalanced { .. }) =>
                    {
                        eprintln!("not committed ({error}); reading on");
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }
}
