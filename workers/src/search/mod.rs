//! `messages.search` (docs/protocol.md §10.12): PostgreSQL full-text search over the
//! archived messages of the conversations the caller participates in now.
//!
//! The query text is handed to `websearch_to_tsquery('simple', ...)` as a bound
//! parameter: any text (operators, quotes, unbalanced punctuation) is a query, never SQL
//! and never an error; text without words finds nothing. Only live `message.new` rows
//! are searched, by their current text, so an edit is found by its latest text and a
//! deleted message never. Participation is read from `switchboard.channel_members` at
//! the time of the call; a `ch` the caller is not in is refused exactly like one that
//! does not exist.
//!
//! Two plans give the same page: walking the archive back from the newest message
//! (fast when matches are common) and, when that has not answered within
//! [`NEWEST_FIRST_BUDGET_MS`], collecting the matches from the GIN index first (fast when
//! they are rare, such as a phrase that never occurs). PostgreSQL's estimate cannot tell
//! the two cases apart, so the time budget does.

use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use switchboard_schemas::{ChannelName, ErrorCode};

use crate::inbox::cursor::{Cursor, InvalidCursor};
use crate::responder::{Call, Method, Reply, RpcError, Service};

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;
/// Longest query text, in bytes: far above anything typed, well under the RPC's cap.
const MAX_QUERY: usize = 16 * 1024;

/// The messages `$1` may read that match `$2`, in channel `$3` if given, before
/// (`$4` µs, `$5` seq) if given: both plans below select from these, so the membership
/// check is written once.
const MATCHING: &str = "
    SELECT a.channel, a.epoch, a.seq, a.ts
      FROM switchboard.archive a, websearch_to_tsquery('simple', $2) q
     WHERE a.type = 'message.new' AND NOT a.deleted AND a.search @@ q
       AND a.channel IN (SELECT m.channel FROM switchboard.channel_members m
                          WHERE m.user_id = $1 AND m.active)
       AND ($3::text IS NULL OR a.channel = $3)
       AND ($4::bigint IS NULL
            OR (a.ts, a.seq) < (timestamptz 'epoch' + $4 * interval '1 microsecond', $5))";

/// How the `hit` CTE finds the page's matches.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// By walking the archive back in time and testing each message: quick when matches
    /// are common (the usual case), slow when they are rare.
    NewestFirst,
    /// Every match from the full-text index first, then the newest of them: quick when
    /// matches are rare, which is when [`Plan::NewestFirst`] is slow.
    IndexFirst,
}

impl Plan {
    /// `WITH hit AS (...)` for this plan.
    fn hit(self) -> String {
        match self {
            Plan::NewestFirst => {
                format!("WITH hit AS ({MATCHING}\n ORDER BY a.ts DESC, a.seq DESC LIMIT $6)")
            }
            Plan::IndexFirst => format!("WITH hit AS MATERIALIZED ({MATCHING})"),
        }
    }
}

/// The page itself, from `hit` (either CTE above, limited to `$6`). Matched words are
/// marked `**word**` in snippets, which are plain text (not HTML).
const PAGE: &str = "
SELECT a.channel, a.seq, a.envelope::text,
       ts_headline('simple', a.text, websearch_to_tsquery('simple', $2),
                   'StartSel=**, StopSel=**, MaxWords=24, MinWords=8, MaxFragments=2, FragmentDelimiter=\" … \"'),
       (extract(epoch FROM a.ts) * 1000000)::bigint
  FROM (SELECT * FROM hit ORDER BY ts DESC, seq DESC LIMIT $6) h
  JOIN switchboard.archive a ON a.channel = h.channel AND a.epoch = h.epoch AND a.seq = h.seq
 ORDER BY h.ts DESC, h.seq DESC";

/// How long the newest-first plan may take before the index-first plan answers instead.
const NEWEST_FIRST_BUDGET_MS: u32 = 40;

const PARTICIPANT: &str = "
SELECT EXISTS (SELECT 1 FROM switchboard.channel_members
                WHERE channel = $1 AND user_id = $2 AND active)";

/// `svc.messages.search`.
pub struct SearchService {
    db: PgPool,
}

impl SearchService {
    pub fn new(db: PgPool) -> SearchService {
        SearchService { db }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    q: String,
    ch: Option<String>,
    limit: Option<u32>,
    before: Option<String>,
}

impl Service for SearchService {
    const NAME: &'static str = "messages";

    fn methods(&self) -> &'static [Method] {
        const METHODS: &[Method] = &[Method::public("messages.search")];
        METHODS
    }

    async fn call(&self, method: &str, call: Call) -> Reply {
        let params: Params = call.params()?;
        let bad = |message: String| RpcError::new(ErrorCode::BadRequest, message);
        if params.q.len() > MAX_QUERY {
            return Err(bad(format!("q above {MAX_QUERY} bytes")));
        }
        let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(bad(format!("limit must be 1 to {MAX_LIMIT}")));
        }
        let before = params
            .before
            .as_deref()
            .map(|text| {
                let cursor = Cursor::parse(text)?;
                let seq: i64 = cursor.key.parse().map_err(|_| InvalidCursor)?;
                Ok((cursor.micros, seq))
            })
            .transpose()
            .map_err(|e: InvalidCursor| bad(e.to_string()))?;
        let unavailable = |e: &dyn std::fmt::Display| RpcError::unavailable(method, e);
        let channel = match params.ch.as_deref() {
            None => None,
            Some(text) => {
                let channel = ChannelName::parse(text).map_err(|e| bad(e.to_string()))?;
                let participant: bool = sqlx::query_scalar(PARTICIPANT)
                    .bind(channel.as_str())
                    .bind(call.caller.as_str())
                    .fetch_one(&self.db)
                    .await
                    .map_err(|e| unavailable(&e))?;
                if !participant {
                    return Err(RpcError::new(
                        ErrorCode::Forbidden,
                        "not a participant of this conversation",
                    ));
                }
                Some(channel)
            }
        };
        // PostgreSQL's text cannot hold NUL; it separates words like any punctuation.
        let query = params.q.replace('\0', " ");
        let search = Search {
            caller: call.caller.as_str(),
            query: &query,
            channel: channel.as_ref().map(ChannelName::as_str),
            before,
            limit: i64::from(limit) + 1,
        };
        let rows = search.run(&self.db).await.map_err(|e| unavailable(&e))?;
        let more = rows.len() > limit as usize;
        let mut results = Vec::with_capacity(rows.len().min(limit as usize));
        let mut next = None;
        for (channel, seq, envelope, snippet, micros) in rows.into_iter().take(limit as usize) {
            let event: Value = serde_json::from_str(&envelope).map_err(|e| unavailable(&e))?;
            results.push(json!({ "ch": channel, "seq": seq, "event": event, "snippet": snippet }));
            next = more.then(|| {
                Cursor {
                    micros,
                    key: seq.to_string(),
                }
                .encode()
            });
        }
        Ok(json!({ "results": results, "next": next }))
    }
}

type Row = (String, i64, String, String, i64);

/// One search's bound parameters.
struct Search<'a> {
    caller: &'a str,
    query: &'a str,
    channel: Option<&'a str>,
    before: Option<(i64, i64)>,
    limit: i64,
}

impl Search<'_> {
    /// Newest-first within [`NEWEST_FIRST_BUDGET_MS`]; past it (rare matches: the walk
    /// back finds too few), from the full-text index. Both give the same page.
    async fn run(&self, db: &PgPool) -> Result<Vec<Row>, sqlx::Error> {
        let mut tx = db.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL statement_timeout = {NEWEST_FIRST_BUDGET_MS}"
        )))
        .execute(&mut *tx)
        .await?;
        match self.fetch(&mut tx, Plan::NewestFirst).await {
            Ok(rows) => {
                tx.commit().await?;
                return Ok(rows);
            }
            Err(error) if is_cancelled(&error) => tx.rollback().await?,
            Err(error) => return Err(error),
        }
        let mut conn = db.acquire().await?;
        self.fetch(&mut conn, Plan::IndexFirst).await
    }

    async fn fetch(
        &self,
        conn: &mut sqlx::PgConnection,
        plan: Plan,
    ) -> Result<Vec<Row>, sqlx::Error> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{}{PAGE}", plan.hit())))
            .bind(self.caller)
            .bind(self.query)
            .bind(self.channel)
            .bind(self.before.map(|(micros, _)| micros))
            .bind(self.before.map(|(_, seq)| seq))
            .bind(self.limit)
            .fetch_all(conn)
            .await
    }
}

/// `query_canceled`: the statement timeout fired.
fn is_cancelled(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "57014")
}
