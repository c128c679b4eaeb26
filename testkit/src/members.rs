//! Memberships written straight into the `members` bucket, the way the membership worker
//! writes them (key `<ns>.<id>.<user>`), for tests that run no worker.

use async_nats::jetstream::Context;

/// Makes `user` a member of `channel` (e.g. `project:p1`).
pub async fn add_member(js: &Context, channel: &str, user: &str) {
    let kv = js
        .get_key_value("members")
        .await
        .expect("the members bucket");
    kv.put(member_key(channel, user), r#"{"role":"member"}"#.into())
        .await
        .expect("put a membership");
}

/// Ends `user`'s membership of `channel`.
pub async fn remove_member(js: &Context, channel: &str, user: &str) {
    let kv = js
        .get_key_value("members")
        .await
        .expect("the members bucket");
    kv.delete(member_key(channel, user))
        .await
        .expect("delete a membership");
}

fn member_key(channel: &str, user: &str) -> String {
    let (ns, id) = channel
        .split_once(':')
        .expect("a channel name is <namespace>:<id>");
    format!("{ns}.{id}.{user}")
}
