//! A value that tasks can wait on until it says what they wait for: what a
//! `tokio::sync::watch` channel does, in a fraction of its memory.
//!
//! A watch channel allocates about 340 bytes, most of it eight `Notify`s that spread the
//! wake-ups of many receivers. The edge kept one per channel (is its head known yet) and
//! one per subscription (is it on its channel yet), each watched by a task or two: on an
//! edge of idle connections that each hold a channel of their own, that was a tenth of the
//! memory per connection (BENCHMARKS.md, "Memory per idle connection, a second look").
//! This is the value behind a lock and one `Notify`, inline in whatever holds it.

use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct Watched<T> {
    value: Mutex<T>,
    changed: Notify,
}

impl<T> Watched<T> {
    pub fn new(value: T) -> Watched<T> {
        Watched {
            value: Mutex::new(value),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, T> {
        self.value.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the value and wakes every waiter.
    pub fn set(&self, value: T) {
        *self.lock() = value;
        self.changed.notify_waiters();
    }

    /// Changes the value in place (`change` returns whether it did) and wakes every
    /// waiter if it did.
    pub fn update(&self, change: impl FnOnce(&mut T) -> bool) {
        if change(&mut self.lock()) {
            self.changed.notify_waiters();
        }
    }

    /// Reads the value as it is now.
    pub fn read<R>(&self, read: impl FnOnce(&T) -> R) -> R {
        read(&self.lock())
    }

    /// Waits until `answer` makes something of the value, and returns that.
    pub async fn wait_for<R>(&self, mut answer: impl FnMut(&T) -> Option<R>) -> R {
        loop {
            // Registered before the value is read: a change in between still wakes it.
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if let Some(answer) = answer(&self.lock()) {
                return answer;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_waiter_sees_a_change_made_after_it_began_to_wait() {
        let watched = Arc::new(Watched::new(0));
        let waiter = tokio::spawn({
            let watched = watched.clone();
            async move { watched.wait_for(|v| (*v >= 2).then_some(*v)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        watched.set(1);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "1 is not what it waits for");
        watched.update(|v| {
            *v = 2;
            true
        });
        let seen = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the change")
            .unwrap();
        assert_eq!(seen, 2);
    }

    #[tokio::test]
    async fn a_value_already_there_answers_at_once() {
        let watched = Watched::new("ready");
        assert_eq!(watched.wait_for(|v| Some(*v)).await, "ready");
        assert_eq!(watched.read(|v| v.len()), 5);
    }

    #[tokio::test]
    async fn a_waiter_wakes_for_the_update_that_changes_the_value() {
        let watched = Arc::new(Watched::new(false));
        let waiter = tokio::spawn({
            let watched = watched.clone();
            async move { watched.wait_for(|v| v.then_some(())).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        watched.update(|_| false);
        watched.update(|v| {
            *v = true;
            true
        });
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the change")
            .unwrap();
    }
}
