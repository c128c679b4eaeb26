//! `switchboard replay` past the stream (docs/protocol.md, section 10.10): a conversation's
//! older events, purged from `EVENTS`, come from the workers' archive (a real
//! `switchboard-workers` process with the archive job, real PostgreSQL), merged by seq
//! with the stream's part and with other channels.

mod support;

use serde_json::{Value, json};
use support::{Bus, Role, ok, replayed, switchboard};
use switchboard_testkit::{Workers, archived_through, purge_events};

#[tokio::test]
async fn replay_reads_what_the_stream_lost_from_the_archive() {
    let bus = Bus::start().await;
    let _workers = Workers::new(bus.nats.env(Role::Workers), "archive")
        .start_with_postgres()
        .await;
    let mut conversation = Vec::new();
    let mut project = Vec::new();
    for i in 0..12 {
        let (seq, event) = bus
            .publish(
                "conversation:c1",
                "message.new",
                json!({"text": format!("m{i}")}),
            )
            .await;
        conversation.push((seq, event));
        let (seq, event) = bus.publish("project:p1", "bid.new", json!({"i": i})).await;
        project.push((seq, event));
    }
    let (edit, _) = bus
        .publish(
            "conversation:c1",
            "message.edited",
            json!({"seq": conversation[2].0, "text": "edited"}),
        )
        .await;
    archived_through(&bus.client, "conversation:c1", edit).await;
    purge_events(&bus.client, "rt.conversation.c1", 4).await;

    let out = ok(&switchboard(
        &bus.admin_env(),
        &[
            "replay",
            "--channel",
            "conversation:c1",
            "--channel",
            "project:p1",
        ],
    ));
    let lines = replayed(&out);
    let mut expected: Vec<u64> = conversation
        .iter()
        .chain(&project)
        .map(|(seq, _)| *seq)
        .collect();
    expected.push(edit);
    expected.sort();
    assert_eq!(
        lines.iter().map(|(seq, _, _)| *seq).collect::<Vec<_>>(),
        expected,
        "every event once, in seq order"
    );
    for (seq, channel, envelope) in &lines {
        if let Some((_, published)) = conversation.iter().find(|(s, _)| s == seq) {
            assert_eq!(channel, "conversation:c1");
            assert_eq!(envelope.id, published.id);
            let data: Value = serde_json::from_str(envelope.data.as_str()).unwrap();
            if *seq == conversation[2].0 {
                assert_eq!(data["text"], "edited", "the archive's current text");
            } else {
                assert_eq!(
                    data,
                    serde_json::from_str::<Value>(published.data.as_str()).unwrap()
                );
            }
        }
    }

    // A seq window that ends inside the archived part.
    let to = conversation[5].0.to_string();
    let from = conversation[1].0.to_string();
    let out = ok(&switchboard(
        &bus.admin_env(),
        &[
            "replay",
            "--channel",
            "conversation:c1",
            "--from-seq",
            &from,
            "--to-seq",
            &to,
        ],
    ));
    assert_eq!(
        replayed(&out)
            .iter()
            .map(|(seq, _, _)| *seq)
            .collect::<Vec<_>>(),
        conversation[1..=5]
            .iter()
            .map(|(s, _)| *s)
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn without_the_archive_replay_says_so_and_gives_what_the_stream_holds() {
    let bus = Bus::start().await;
    let mut seqs = Vec::new();
    for i in 0..6 {
        let (seq, _) = bus
            .publish(
                "conversation:c2",
                "message.new",
                json!({"text": format!("m{i}")}),
            )
            .await;
        seqs.push(seq);
    }
    purge_events(&bus.client, "rt.conversation.c2", 2).await;
    let output = switchboard(
        &bus.admin_env(),
        &["replay", "--channel", "conversation:c2"],
    );
    let out = ok(&output);
    assert_eq!(
        replayed(&out)
            .iter()
            .map(|(seq, _, _)| *seq)
            .collect::<Vec<_>>(),
        seqs[4..].to_vec()
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the archive did not answer"), "{stderr}");
}
