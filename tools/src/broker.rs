//! `tidelog broker describe`: the broker's version, addresses, data directory and
//! effective settings (`Admin.DescribeBroker`).

use serde_json::{Map, Value, json};
use tidelog_proto::v1::DescribeBrokerRequest;

use crate::args::BrokerCommand;
use crate::client::Broker;
use crate::error::CliResult;
use crate::output::{Stdout, render_pairs};
use crate::time::format_datetime_ms;

pub async fn run(broker: &Broker, command: BrokerCommand, json: bool) -> CliResult<()> {
    let mut out = Stdout::new();
    match command {
        BrokerCommand::Describe => {
            let described = broker
                .admin()
                .describe_broker(DescribeBrokerRequest {})
                .await
                .map_err(|s| broker.error("describing the broker", &s))?
                .into_inner();
            if json {
                let settings: Map<String, Value> = described
                    .settings
                    .iter()
                    .map(|s| (s.name.clone(), Value::String(s.value.clone())))
                    .collect();
                out.json_pretty(&json!({
                    "server": broker.server,
                    "version": described.version,
                    "data_dir": described.data_dir,
                    "listen": described.listen,
                    "metrics_listen": described.metrics_listen,
                    "started_at_ms": described.started_at_ms,
                    "settings": settings,
                }))?;
            } else {
                out.text(&render_pairs(&[
                    ("server", broker.server.clone()),
                    ("version", described.version.clone()),
                    ("data-dir", described.data_dir.clone()),
                    ("listen", described.listen.clone()),
                    ("metrics-listen", described.metrics_listen.clone()),
                    ("started", format_datetime_ms(described.started_at_ms)),
                ]))?;
                out.line("")?;
                out.line("effective settings (flag > environment > config file > default):")?;
                let pairs: Vec<(&str, String)> = described
                    .settings
                    .iter()
                    .map(|s| (s.name.as_str(), s.value.clone()))
                    .collect();
                out.text(
                    &render_pairs(&pairs)
                        .lines()
                        .map(|l| format!("  {l}\n"))
                        .collect::<String>(),
                )?;
            }
        }
    }
    out.flush()
}
