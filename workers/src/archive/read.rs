//! `int.archive.read` (docs/protocol.md §10.10): the edges' history and resume read what
//! `EVENTS` no longer holds from here. Internal: only Switchboard's own processes can
//! publish on `int.>`, and the edge has authorized the channel before it asks.

use async_nats::jetstream;
use serde::Deserialize;
use sqlx::PgPool;
use switchboard_bus::EVENTS_STREAM;
use switchboard_bus::store::Store;
use switchboard_schemas::{ChannelName, ErrorCode};

use super::consumer::NAME;
use super::store::bigint;
use crate::responder::{Call, Method, Reply, RpcError, Service};

const MAX_LIMIT: u32 = 1000;
/// Bytes of events in one answer at most: well under NATS's 1 MB message limit.
const MAX_ANSWER: usize = 768 * 1024;
const DEFAULT_LIMIT: u32 = 100;

const ASCENDING: &str = "
SELECT seq, envelope::text FROM switchboard.archive
 WHERE channel = $1 AND epoch = $2 AND seq > $3 AND ($4::bigint IS NULL OR seq < $4)
 ORDER BY seq ASC
 LIMIT $5";

const DESCENDING: &str = "
SELECT seq, envelope::text FROM switchboard.archive
 WHERE channel = $1 AND epoch = $2 AND seq > $3 AND ($4::bigint IS NULL OR seq < $4)
 ORDER BY seq DESC
 LIMIT $5";

/// Where the archive is complete from in an epoch (see the migration `archive_coverage`).
const COVERAGE: &str = "
SELECT complete_from FROM switchboard.archive_coverage WHERE epoch = $1";

const HIGHEST: &str = "
SELECT coalesce(max(seq), 0) FROM switchboard.archive WHERE channel = $1 AND epoch = $2";

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Order {
    Asc,
    Desc,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    ch: String,
    epoch: String,
    #[serde(default)]
    after: u64,
    before: Option<u64>,
    limit: Option<u32>,
    order: Option<Order>,
}

/// `int.archive.read`.
pub struct ArchiveReader {
    db: PgPool,
    js: jetstream::Context,
    positions: Store,
}

impl ArchiveReader {
    pub fn new(db: PgPool, js: jetstream::Context, positions: Store) -> ArchiveReader {
        ArchiveReader { db, js, positions }
    }

    /// The seq up to which every archived event of `channel` in `epoch` is in the table.
    async fn through(&self, channel: &ChannelName, epoch: &str) -> Result<u64, String> {
        // Read before the consumer: whatever the consumer has acked by then covers it.
        let position = self.positions.position().await.map_err(|e| e.to_string())?;
        if position.epoch != epoch {
            let highest: i64 = sqlx::query_scalar(HIGHEST)
                .bind(channel.as_str())
                .bind(epoch)
                .fetch_one(&self.db)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(u64::try_from(highest).unwrap_or(0));
        }
        let stream = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        let info = match stream.consumer_info(NAME).await {
            Ok(info) => info,
            // No consumer yet: nothing is archived in this epoch.
            Err(error) if error.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {
                return Ok(0);
            }
            Err(error) => return Err(error.to_string()),
        };
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            Ok(position.last_seq.max(info.ack_floor.stream_sequence))
        } else {
            Ok(info.ack_floor.stream_sequence)
        }
    }
}

impl Service for ArchiveReader {
    const NAME: &'static str = "archive";

    fn methods(&self) -> &'static [Method] {
        const METHODS: &[Method] = &[Method::internal("archive.read")];
        METHODS
    }

    async fn call(&self, method: &str, call: Call) -> Reply {
        let params: Params = call.params()?;
        let bad = |message: String| RpcError::new(ErrorCode::BadRequest, message);
        let channel = ChannelName::parse(&params.ch).map_err(|e| bad(e.to_string()))?;
        if channel.alias().is_some() {
            return Err(bad("the archive is read by base channel, not alias".into()));
        }
        let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(bad(format!("limit must be 1 to {MAX_LIMIT}")));
        }
        if params.epoch.is_empty() || !params.epoch.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(
                "epoch must be the stream's epoch (decimal digits)".into()
            ));
        }
        let unavailable = |e: String| RpcError::unavailable(method, e);
        // The position first: events archived meanwhile are then in the page or above
        // `through`, never missing from both.
        let through = self
            .through(&channel, &params.epoch)
            .await
            .map_err(unavailable)?;
        // Without a record the archive holds nothing of this epoch: complete from
        // nowhere below `through`.
        let from: Option<i64> = sqlx::query_scalar(COVERAGE)
            .bind(&params.epoch)
            .fetch_optional(&self.db)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let from = from.map_or(through + 1, |f| u64::try_from(f).unwrap_or(0));
        let sql = match params.order.unwrap_or(Order::Asc) {
            Order::Asc => ASCENDING,
            Order::Desc => DESCENDING,
        };
        let rows: Vec<(i64, String)> = sqlx::query_as(sql)
            .bind(channel.as_str())
            .bind(&params.epoch)
            .bind(bigint(params.after))
            .bind(params.before.map(bigint))
            .bind(i64::from(limit))
            .fetch_all(&self.db)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let mut events = Vec::with_capacity(rows.len());
        let mut size = 0;
        let mut truncated = false;
        for (seq, envelope) in rows {
            // The answer is one NATS message: a page of large events stops early (never
            // empty) and says so; the caller asks again from its last seq.
            size += envelope.len() + 32;
            if size > MAX_ANSWER && !events.is_empty() {
                truncated = true;
                break;
            }
            let event: serde_json::Value =
                serde_json::from_str(&envelope).map_err(|e| unavailable(e.to_string()))?;
            events.push(serde_json::json!({ "seq": seq, "event": event }));
        }
        let mut answer = serde_json::json!({ "events": events, "through": through, "from": from });
        if truncated {
            answer["truncated"] = serde_json::json!(true);
        }
        Ok(answer)
    }
}
