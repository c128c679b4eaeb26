//! The wait between two rounds of a loop that is woken when new rows are committed and
//! polls otherwise (the outbox relay, the notifications dispatcher).

use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Waits for the next round: a wake-up, or `poll` without one. A round started by a
/// wake-up begins at least `spacing` after the previous one (`round`, when it began):
/// rows committed one at a time in a busy moment are then taken by one round instead of
/// one round each, while a row after a quiet moment still goes at once. False once
/// `shutdown` fired.
pub async fn next_round(
    wake: &Notify,
    shutdown: &CancellationToken,
    round: Instant,
    spacing: Duration,
    poll: Duration,
) -> bool {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => false,
        () = wake.notified() => tokio::select! {
            biased;
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep_until(round + spacing) => true,
        },
        () = tokio::time::sleep(poll) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_soon_after_a_round_waits_out_the_spacing_and_shutdown_ends_the_wait() {
        let (wake, shutdown) = (Notify::new(), CancellationToken::new());
        let spacing = Duration::from_millis(50);
        let round = Instant::now();
        wake.notify_one();
        assert!(next_round(&wake, &shutdown, round, spacing, Duration::from_secs(60)).await);
        assert!(
            round.elapsed() >= spacing,
            "woke before the spacing was over"
        );

        wake.notify_one();
        shutdown.cancel();
        let far = Duration::from_secs(3600);
        assert!(!next_round(&wake, &shutdown, Instant::now(), far, far).await);
    }
}
