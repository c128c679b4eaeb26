//! `switchboard status`: streams, consumers and buckets at a glance.

use switchboard_bus::definitions;

use crate::output;

pub async fn run(nats_url: &str, json: bool) -> anyhow::Result<()> {
    let client = crate::connect(nats_url).await?;
    let js = async_nats::jetstream::new(client);
    let status = definitions::status(&js).await?;
    if json {
        return output::json(&status);
    }
    let rows: Vec<Vec<String>> = status
        .streams
        .iter()
        .map(|s| {
            vec![
                s.bucket
                    .as_ref()
                    .map_or_else(|| s.name.clone(), |b| format!("{b} (kv)")),
                s.messages.to_string(),
                s.bytes.to_string(),
                format!("{}..{}", s.first_seq, s.last_seq),
                s.subjects.to_string(),
                s.replicas.to_string(),
            ]
        })
        .collect();
    output::table(
        &["STREAM", "MESSAGES", "BYTES", "SEQ", "SUBJECTS", "REPLICAS"],
        &rows,
    );
    let consumers: Vec<Vec<String>> = status
        .streams
        .iter()
        .flat_map(|s| {
            s.consumers.iter().map(|c| {
                vec![
                    s.name.clone(),
                    c.name.clone(),
                    c.pending.to_string(),
                    c.ack_pending.to_string(),
                    c.redelivered.to_string(),
                    c.idle
                        .map_or_else(|| "-".into(), |d| format!("{}s", d.as_secs())),
                ]
            })
        })
        .collect();
    println!();
    if consumers.is_empty() {
        println!("no consumers");
    } else {
        output::table(
            &[
                "STREAM",
                "CONSUMER",
                "PENDING",
                "ACK PENDING",
                "REDELIVERED",
                "IDLE",
            ],
            &consumers,
        );
    }
    Ok(())
}
