//! A PostgreSQL connection of a job's own, for a loop that uses the database one step at
//! a time (docs/operations.md, section 2).
//!
//! sqlx tests every connection handed back to its pool with a round trip of its own (a
//! `Sync` and its `ReadyForQuery`), whatever the pool's options say. A job that takes a
//! pooled connection for each event pays that round trip on every event, and on a small
//! machine a round trip (a wake-up of a worker thread and of a PostgreSQL backend) costs
//! as much as the statement it follows. A job that handles one event at a time keeps a
//! connection instead, opened with the pool's settings when first needed.
//!
//! A connection is kept only after work that succeeded on it. After an error, or when
//! the work is dropped half-way (shutdown), it is closed with whatever state it was left
//! in (a broken socket, a transaction begun), and the next work opens a fresh one: a
//! restarted PostgreSQL costs the job one failed attempt, which it retries like any
//! transient error.
//!
//! A job that has other work to do while PostgreSQL does not answer (a server stopped
//! without closing its sockets, a route that drops packets) gives its connection a limit
//! ([`Dedicated::with_limit`]): work that takes longer is given up, its connection
//! closed, and the job goes on as it does when PostgreSQL refuses.

use std::time::Duration;

use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;

/// One connection, opened when first needed and kept between pieces of work.
pub struct Dedicated {
    /// Where the connect options come from (the same as the pool's).
    pool: PgPool,
    /// The kept connection, `None` before the first work and after a failed one.
    conn: Mutex<Option<PgConnection>>,
    /// Longest a piece of work may take, waiting its turn included; `None`: no limit.
    limit: Option<Duration>,
}

impl Dedicated {
    pub fn new(pool: &PgPool) -> Dedicated {
        Dedicated {
            pool: pool.clone(),
            conn: Mutex::new(None),
            limit: None,
        }
    }

    /// A connection whose every piece of work fails with a timed-out error once it has
    /// taken `limit`.
    pub fn with_limit(pool: &PgPool, limit: Duration) -> Dedicated {
        Dedicated {
            limit: Some(limit),
            ..Dedicated::new(pool)
        }
    }

    /// Runs `work` on the kept connection, opening one first if none is kept. Work is run
    /// one at a time: callers that overlap wait their turn.
    pub async fn run<T, E>(
        &self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<sqlx::Error>,
    {
        let Some(limit) = self.limit else {
            return self.run_unlimited(work).await;
        };
        // Given up half-way, the work's connection goes with it (see the module's notes).
        tokio::time::timeout(limit, self.run_unlimited(work))
            .await
            .unwrap_or_else(|_| {
                Err(timed_out(format!("PostgreSQL did not answer within {limit:?}")).into())
            })
    }

    async fn run_unlimited<T, E>(
        &self,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<sqlx::Error>,
    {
        let mut kept = self.conn.lock().await;
        let mut conn = match kept.take() {
            Some(conn) => conn,
            None => self.connect().await?,
        };
        let result = work(&mut conn).await;
        if result.is_ok() {
            *kept = Some(conn);
        }
        result
    }

    /// A new connection, given up after the pool's acquire timeout like a pooled one (a
    /// PostgreSQL out of reach without refusing, e.g. behind a dropped route).
    async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        let wait = self.pool.options().get_acquire_timeout();
        tokio::time::timeout(
            wait,
            PgConnection::connect_with(&self.pool.connect_options()),
        )
        .await
        .map_err(|_| {
            timed_out(format!(
                "connecting to PostgreSQL took longer than {wait:?}"
            ))
        })?
    }
}

fn timed_out(message: String) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, message))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use switchboard_testkit::Postgres;

    use super::*;

    async fn backend(conn: &mut PgConnection) -> Result<i32, sqlx::Error> {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(conn)
            .await
    }

    #[tokio::test]
    async fn a_connection_is_kept_after_success_and_replaced_after_a_failure_or_a_cut() {
        let pg = Postgres::start().unwrap();
        let pool = PgPool::connect_lazy(&pg.empty_database().await.unwrap()).unwrap();
        let dedicated = Dedicated::new(&pool);

        let first = dedicated
            .run(async |conn| backend(conn).await)
            .await
            .unwrap();
        let again = dedicated
            .run(async |conn| backend(conn).await)
            .await
            .unwrap();
        assert_eq!(first, again, "kept after work that succeeded");
        assert_eq!(pool.size(), 0, "not one of the pool's connections");

        // Work that fails leaves the connection in a state nobody knows (here, inside a
        // transaction that hit an error): it is closed, and the next work gets another.
        let failed: Result<(), sqlx::Error> = dedicated
            .run(async |conn| {
                sqlx::query("BEGIN").execute(&mut *conn).await?;
                sqlx::query("SELECT 1/0").execute(&mut *conn).await?;
                Ok(())
            })
            .await;
        assert!(failed.is_err());
        let after_failure = dedicated
            .run(async |conn| backend(conn).await)
            .await
            .unwrap();
        assert_ne!(after_failure, first, "a fresh connection after a failure");
        let status: String = dedicated
            .run(async |conn| {
                sqlx::query_scalar("SELECT current_setting('transaction_isolation')")
                    .fetch_one(conn)
                    .await
            })
            .await
            .unwrap();
        assert_eq!(status, "read committed", "usable, outside any transaction");

        // Work dropped half-way (a job's shutdown) leaves nothing half-done behind.
        let cut = tokio::time::timeout(
            Duration::from_millis(200),
            dedicated.run(async |conn| {
                sqlx::query("SELECT pg_sleep(5)").execute(conn).await?;
                Ok::<_, sqlx::Error>(())
            }),
        )
        .await;
        assert!(cut.is_err(), "the sleep was cut short");
        let after_cut = dedicated
            .run(async |conn| backend(conn).await)
            .await
            .unwrap();
        assert_ne!(after_cut, after_failure, "a fresh connection after a cut");
    }

    #[tokio::test]
    async fn work_past_the_limit_fails_and_the_next_gets_a_fresh_connection() {
        let pg = Postgres::start().unwrap();
        let pool = PgPool::connect_lazy(&pg.empty_database().await.unwrap()).unwrap();
        let dedicated = Dedicated::with_limit(&pool, Duration::from_millis(300));
        let first = dedicated
            .run(async |conn| backend(conn).await)
            .await
            .unwrap();

        let slow: Result<(), sqlx::Error> = dedicated
            .run(async |conn| {
                sqlx::query("SELECT pg_sleep(5)").execute(conn).await?;
                Ok(())
            })
            .await;
        let Err(sqlx::Error::Io(error)) = slow else {
            panic!("expected a timed-out error, got {slow:?}");
        };
        assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
        assert!(
            error.to_string().contains("did not answer within 300ms"),
            "{error}"
        );

        let after = dedicated
            .run(async |conn| backend(conn).await)
            .await
            .unwrap();
        assert_ne!(after, first, "the connection given up on is not used again");
    }
}
