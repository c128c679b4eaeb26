//! Presence and receipts end to end: real edges, a real `switchboard-workers` process
//! (presence and receipts jobs), real NATS and PostgreSQL.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use support::*;
use switchboard_testkit::{Workers, WorkersWithPostgres};

async fn workers(stack: &Stack, jobs: &str) -> WorkersWithPostgres {
    Workers::new(stack.nats.env(Role::Workers), jobs)
        .env(
            "SWITCHBOARD_LOG",
            "info,switchboard_workers::presence::reaper=debug",
        )
        .start_with_postgres()
        .await
}

/// Waits until the presence worker answers (it subscribes a moment after it starts), so
/// a test does not take its absence (`unavailable`) for an answer.
async fn presence_service_up(client: &mut Client) {
    let started = Instant::now();
    loop {
        let answer = client
            .request(json!({"op":"rpc","method":"presence.privacy.get"}))
            .await;
        if answer["op"] == "ok" {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the presence service does not answer: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next `user.presence` event's data.
async fn presence(watcher: &mut Client) -> Value {
    let event = watcher
        .recv_where(|f| f["op"] == "evt" && f["event"]["type"] == "user.presence")
        .await;
    event["event"]["data"].clone()
}

#[tokio::test]
async fn devices_come_and_go_and_a_killed_edge_makes_its_user_offline() {
    let stack = Stack::start().await;
    let _workers = workers(&stack, "presence").await;
    let heartbeat = [("SWITCHBOARD_HEARTBEAT_MS", "500")];
    let mut edge_a = stack.edge(&heartbeat);
    let edge_b = stack.edge(&heartbeat);
    let mut watcher = edge_b
        .connect_with(&token("w1", 600, &["presence:u1"]))
        .await;
    watcher.sub(json!({"ch":"presence:u1"})).await;

    // Both are in a project, and u1 lets everyone see them there (`who`).
    stack.add_member("project:p1", "u1").await;
    stack.add_member("project:p1", "w1").await;
    let mut phone = edge_a.connect("u1").await;
    presence_service_up(&mut phone).await;
    let everyone = phone
        .request(json!({"op":"rpc","method":"presence.privacy.set",
                        "params":{"visibility":"everyone"}}))
        .await;
    assert_eq!(everyone["op"], "ok", "{everyone}");
    phone.sub(json!({"ch":"project:p1"})).await;
    let online = presence(&mut watcher).await;
    assert_eq!(
        (online["status"].as_str(), online["devices"].as_u64()),
        (Some("online"), Some(1))
    );
    let laptop = edge_a.connect("u1").await;
    assert_eq!(presence(&mut watcher).await["devices"], 2);
    drop(laptop);
    let one = presence(&mut watcher).await;
    assert_eq!(
        (one["status"].as_str(), one["devices"].as_u64()),
        (Some("online"), Some(1))
    );

    let who = watcher.request(json!({"op":"who","ch":"project:p1"})).await;
    assert_eq!(
        who["members"],
        json!([{"user":"u1","status":"online"}]),
        "{who}"
    );

    // SIGKILL: no clean close; the edge's heartbeat (TTL 1 s) lapses and the workers end
    // its entries.
    edge_a.process.kill();
    let killed = Instant::now();
    let offline = presence(&mut watcher).await;
    assert_eq!(offline["status"], "offline");
    assert!(offline["lastSeen"].is_string(), "{offline}");
    // The heartbeat's TTL is 1 s; the workers then end its entries. Bounded loosely:
    // CI runs this beside other tests on two cores.
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "offline after {:?}",
        killed.elapsed()
    );
    // Its occupancy went with it: `who` on another edge no longer lists u1.
    let who = watcher.request(json!({"op":"who","ch":"project:p1"})).await;
    assert_eq!(who["members"], json!([]), "{who}");
    // (The worker's own tests check that last-seen is stored in PostgreSQL.)
    drop(phone);
}

#[tokio::test]
async fn invisible_users_look_offline_and_privacy_is_enforced() {
    let stack = Stack::start().await;
    let _workers = workers(&stack, "presence").await;
    let edge = stack.edge(&[]);
    let mut target = edge.connect("u1").await;
    let mut stranger = edge.connect("u9").await;
    presence_service_up(&mut stranger).await;
    // Contacts only (the default): a stranger may not watch, and is told exactly what
    // a watch of a user who does not exist is told, on the socket and over HTTP.
    let mut hidden = stranger.sub(json!({"ch":"presence:u1"})).await;
    let mut nobody = stranger.sub(json!({"ch":"presence:never-seen"})).await;
    assert_eq!(hidden["code"], "forbidden");
    hidden["id"] = Value::Null;
    nobody["id"] = Value::Null;
    assert_eq!(hidden, nobody);
    let bearer = format!("Bearer {}", token("u9", 600, &[]));
    let refusals = ["/v1/poll?ch=presence:u1", "/v1/poll?ch=presence:never-seen"]
        .map(|path| http_as(&edge.addr, "GET", path, &bearer, ""));
    let [hidden, nobody] = futures_util::future::join_all(refusals)
        .await
        .try_into()
        .unwrap();
    assert_eq!(hidden.0, 403, "{}", hidden.1);
    assert_eq!(
        hidden.1.replace("presence:u1", "presence:X"),
        nobody.1.replace("presence:never-seen", "presence:X")
    );
    target
        .request(
            json!({"op":"rpc","method":"presence.privacy.set","params":{"visibility":"everyone"}}),
        )
        .await;
    assert_eq!(
        stranger
            .sub(json!({"ch":"presence:u1","since":{"last":1}}))
            .await["op"],
        "ok"
    );
    // `since.last: 1` gives the current state at once.
    assert_eq!(presence(&mut stranger).await["status"], "online");
    target
        .request(json!({"op":"presence","status":"invisible"}))
        .await;
    let hidden = presence(&mut stranger).await;
    assert_eq!(
        hidden["status"], "offline",
        "invisible looks offline: {hidden}"
    );
}

#[tokio::test]
async fn receipts_move_from_sent_to_delivered_to_read() {
    let stack = Stack::start().await;
    // Participants come from events, through the membership worker, as in production.
    let _workers = workers(&stack, "membership,receipts").await;
    for user in ["alice", "bob"] {
        stack
            .publish(
                "conversation:c1",
                "conversation.participant_added",
                json!({"user": user}),
            )
            .await;
    }
    let edge = stack.edge(&[]);
    let mut alice = edge.connect("alice").await;
    let mut bob = edge.connect("bob").await;
    assert_eq!(
        alice.sub_member(json!({"ch":"conversation:c1"})).await["op"],
        "ok"
    );
    assert_eq!(
        bob.sub_member(json!({"ch":"conversation:c1"})).await["op"],
        "ok"
    );
    let mut sent = Vec::new();
    for text in ["one", "two", "three"] {
        let ok = alice
            .request(json!({"op":"pub","ch":"conversation:c1","type":"message.new","data":{"text": text}}))
            .await;
        sent.push(ok["seq"].as_u64().unwrap());
    }
    bob.send(json!({"op":"ack","ch":"conversation:c1","seq": sent[1]}))
        .await;
    bob.send(json!({"op":"read","ch":"conversation:c1","seq": sent[0]}))
        .await;
    let receipt = alice
        .recv_where(|f| f["op"] == "evt" && f["event"]["type"] == "message.receipt")
        .await;
    assert_eq!(
        receipt["event"]["data"],
        json!({"user":"bob","delivered": sent[1],"read": sent[0]})
    );
    // A regressing cursor publishes nothing.
    bob.send(json!({"op":"ack","ch":"conversation:c1","seq": sent[0]}))
        .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    while let Some(frame) = alice.try_recv(Duration::from_millis(300)).await {
        assert_ne!(frame["event"]["type"], "message.receipt", "{frame}");
    }
    let cursors = alice
        .request(json!({"op":"rpc","method":"receipts.get","params":{"channel":"conversation:c1"}}))
        .await;
    assert_eq!(
        cursors["result"]["cursors"],
        json!([{"user":"bob","delivered": sent[1],"read": sent[0]}]),
        "{cursors}"
    );

    // A read past the conversation's end is clamped to its last seq (docs/protocol.md,
    // section 4.6): the last event stored on it before the receipt that reports it.
    bob.send(json!({"op":"read","ch":"conversation:c1","seq": sent[2] + 1_000_000}))
        .await;
    let receipt = alice
        .recv_where(|f| f["op"] == "evt" && f["event"]["type"] == "message.receipt")
        .await;
    let store = switchboard_bus::store::Store::new(stack.client.clone());
    let subject = switchboard_schemas::ChannelName::parse("conversation:c1")
        .unwrap()
        .subject(switchboard_schemas::SubjectKind::Durable);
    let last = store
        .last_at_or_before(&subject, Some(receipt["seq"].as_u64().unwrap() - 1))
        .await
        .unwrap()
        .unwrap()
        .seq;
    assert!(last >= sent[2]);
    assert_eq!(
        receipt["event"]["data"],
        json!({"user":"bob","delivered": last,"read": last})
    );
}

/// Privacy holds wherever presence shows (docs/protocol.md, section 9.4), with the real
/// presence and membership workers: a user who chose `nobody` is absent from `who` and
/// announces no `join`/`leave`; a watcher whose right to watch ends with a privacy change
/// gets `unsubbed` `revoked` within a second.
#[tokio::test]
async fn a_private_user_is_absent_from_who_and_silent_and_watchers_are_revoked() {
    let stack = Stack::start().await;
    let _workers = workers(&stack, "presence,membership").await;
    for user in ["u1", "hider"] {
        stack
            .publish(
                "project:p1",
                "member.added",
                json!({"user": user, "role": "member"}),
            )
            .await;
    }
    let edge = stack.edge(&[]);
    let mut hider = edge.connect("hider").await;
    let mut watcher = edge.connect("u1").await;
    presence_service_up(&mut watcher).await;
    // Contacts (the default) through project:p1: u1 may watch hider's presence.
    let watching = watcher
        .sub_within(
            json!({"ch":"presence:hider"}),
            Instant::now(),
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(watching["op"], "ok", "{watching}");
    watcher
        .sub_within(
            json!({"ch":"project:p1"}),
            Instant::now(),
            Duration::from_secs(5),
        )
        .await;

    let set = hider
        .request(
            json!({"op":"rpc","method":"presence.privacy.set","params":{"visibility":"nobody"}}),
        )
        .await;
    assert_eq!(set["op"], "ok", "{set}");
    let changed = Instant::now();
    let revoked = watcher
        .recv_where(|f| f["op"] == "unsubbed" && f["ch"] == "presence:hider")
        .await;
    assert_eq!(revoked["code"], "revoked");
    assert!(
        changed.elapsed() < Duration::from_secs(1),
        "revoked after {:?}",
        changed.elapsed()
    );

    // Now hider joins the project channel: `who` leaves them out for u1 while their own
    // view lists them (so their occupancy is written), and no `join` reaches u1.
    tokio::time::sleep(Duration::from_millis(300)).await;
    hider
        .sub_within(
            json!({"ch":"project:p1"}),
            Instant::now(),
            Duration::from_secs(5),
        )
        .await;
    // Occupancy is written without waiting for an acknowledgement: ask until it shows.
    let started = Instant::now();
    loop {
        let own = hider.request(json!({"op":"who","ch":"project:p1"})).await;
        let listed: Vec<&str> = own["members"]
            .as_array()
            .unwrap_or_else(|| panic!("{own}"))
            .iter()
            .filter_map(|m| m["user"].as_str())
            .collect();
        if listed == ["hider", "u1"] {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "{own}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let who = watcher.request(json!({"op":"who","ch":"project:p1"})).await;
    assert_eq!(
        who["members"],
        json!([{"user":"u1","status":"online"}]),
        "{who}"
    );
    hider.request(json!({"op":"unsub","ch":"project:p1"})).await;
    // Neither the join nor the leave: nothing from hider reaches u1.
    while let Some(frame) = watcher.try_recv(Duration::from_millis(500)).await {
        assert_ne!(
            frame["from"], "hider",
            "a private user's signal reached u1: {frame}"
        );
    }
}

/// A connection that opens `invisible` (docs/protocol.md, section 9) is never shown
/// online to a watcher, with the real presence worker: the watcher's `user.presence`
/// events never say `online` until the user chooses a visible status.
#[tokio::test]
async fn a_connection_opened_invisible_is_never_online_to_a_watcher() {
    let stack = Stack::start().await;
    let _workers = workers(&stack, "presence").await;
    let edge = stack.edge(&[]);
    // A grant lets the watcher watch whatever shy's privacy says.
    let mut watcher = edge
        .connect_with(&token("w1", 600, &["presence:shy"]))
        .await;
    presence_service_up(&mut watcher).await;
    assert_eq!(
        watcher
            .sub(json!({"ch":"presence:shy","since":{"last":1}}))
            .await["op"],
        "ok"
    );
    let url = format!("{}?presence=invisible", edge.ws_url());
    let mut phone = Client::open(&url, Some(&token("shy", 600, &[])))
        .await
        .unwrap();
    assert_eq!(phone.recv().await["op"], "welcome");
    let mut laptop = Client::open(&edge.ws_url(), None).await.unwrap();
    laptop
        .send(json!({"op":"hello","token": token("shy", 600, &[]),
                     "presence":{"status":"invisible"}}))
        .await;
    assert_eq!(laptop.recv().await["op"], "welcome");
    stack.add_member("project:p1", "shy").await;
    phone.sub_member(json!({"ch":"project:p1"})).await;
    // Long enough for the worker to have published whatever it would for two devices.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ok = phone
        .request(json!({"op":"presence","status":"away"}))
        .await;
    assert_eq!(ok["op"], "ok");
    let mut seen = Vec::new();
    loop {
        let data = presence(&mut watcher).await;
        let status = data["status"].as_str().unwrap().to_string();
        seen.push(status.clone());
        if status == "away" {
            break;
        }
    }
    assert!(
        seen.iter().all(|s| s == "offline" || s == "away"),
        "the watcher saw {seen:?}"
    );
}

/// An edge whose heartbeat lapsed while it lived (say NATS was out of its reach for longer
/// than the TTL) has its entries ended by the workers; its next heartbeat notices the
/// marker in between and writes them again, so its users come back without reconnecting.
/// The lapse is made by deleting the heartbeat, as its expiry would.
#[tokio::test]
async fn an_edge_whose_heartbeat_lapsed_writes_its_entries_again() {
    let stack = Stack::start().await;
    let _workers = workers(&stack, "presence").await;
    let edge = stack.edge(&[
        ("SWITCHBOARD_HEARTBEAT_MS", "500"),
        ("SWITCHBOARD_EDGE_ID", "edge-lapsing"),
    ]);
    let mut phone = edge.connect("u1").await;
    // Read what comes, so the edge's pings are answered and the session stays open.
    let reading = tokio::spawn(async move { phone.until_closed().await });
    entries_become(&stack, "u1", 1).await;
    let presence = stack.js.get_key_value("presence").await.unwrap();
    let mut writes = presence.watch("u1.>").await.unwrap();

    let edges = stack.js.get_key_value("edges").await.unwrap();
    edges.delete("edge-lapsing").await.unwrap();
    // The workers end the entry when they see the heartbeat gone, and the edge writes it
    // again at its next beat; whichever comes first, the entry is written again (a
    // delete that comes second expects the revision it saw, and fails).
    let mut ended = 0;
    loop {
        let write = tokio::time::timeout(Duration::from_secs(10), writes.next())
            .await
            .expect("the edge writes its entry again")
            .unwrap()
            .unwrap();
        if write.operation == async_nats::jetstream::kv::Operation::Put {
            break;
        }
        ended += 1;
        assert_eq!(
            ended, 1,
            "the entry was ended twice before it was written again"
        );
    }
    // And it stays: the workers do not end an edge that beats again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(presence_entries(&stack, "u1").await, 1);
    assert!(!reading.is_finished(), "the session stayed open throughout");
}

async fn presence_entries(stack: &Stack, user: &str) -> usize {
    switchboard_bus::store::Store::new(stack.client.clone())
        .scan_bucket("presence", &format!("{user}.>"))
        .await
        .map(|e| e.len())
        .unwrap_or_else(|e| panic!("reading the presence bucket: {e}"))
}

async fn entries_become(stack: &Stack, user: &str, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while presence_entries(stack, user).await != want {
        assert!(Instant::now() < deadline, "{user} never had {want} entries");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `presence.get` over the socket (docs/protocol.md, section 9.7), with the real presence
/// and membership workers: a contact list's statuses in one request, the contacts only;
/// a stranger and a user who does not exist are both simply absent.
#[tokio::test]
async fn presence_get_answers_a_contact_list_in_one_request() {
    let stack = Stack::start().await;
    let _workers = workers(&stack, "presence,membership").await;
    for user in ["u1", "pal"] {
        stack
            .publish(
                "project:p1",
                "member.added",
                json!({"user": user, "role": "member"}),
            )
            .await;
    }
    let edge = stack.edge(&[]);
    let mut asker = edge.connect("u1").await;
    presence_service_up(&mut asker).await;
    let _pal = edge.connect("pal").await;
    let _stranger = edge.connect("stranger").await;
    let ask = json!({"op":"rpc","method":"presence.get",
                     "params":{"users":["pal","stranger","ghost"]}});
    let started = Instant::now();
    let answer = loop {
        let answer = asker.request(ask.clone()).await;
        assert_eq!(answer["op"], "ok", "{answer}");
        let presence = answer["result"]["presence"].clone();
        // Membership reaches the presence service through the workers: ask until then.
        if presence.as_array().is_some_and(|p| !p.is_empty()) && presence[0]["status"] == "online" {
            break presence;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let users: Vec<&str> = answer
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["user"].as_str())
        .collect();
    assert_eq!(users, ["pal"], "{answer}");
    assert_eq!(answer[0]["devices"], 1, "{answer}");
}
