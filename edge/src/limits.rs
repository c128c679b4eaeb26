//! Rate and count limits: per connection, per user on this edge, and for sockets that
//! have not authenticated yet (docs/protocol.md, "Limits").
//!
//! Per-user state lives in one map owned by the [`Edge`](crate::Edge); a [`UserSlot`]
//! holds a user's place while their connection lives and frees it when dropped, so no
//! count can leak when a session ends in any way.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::EdgeConfig;

/// Per-user rates are this many times the per-connection ones.
const USER_FACTOR: u32 = 4;
/// `rate_limited` answers per minute before the session ends with `bye rate_limited`.
const RATE_LIMIT_STRIKES: u32 = 10;

/// The frame kinds with a rate of their own besides the overall frame rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Sub,
    Pub,
    Sig,
}

/// A token bucket: `rate` per second, holding at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts events in a sliding minute; `hit` is true once the limit is reached.
#[derive(Debug)]
pub struct WindowCounter {
    limit: u32,
    hits: std::collections::VecDeque<Instant>,
}

impl WindowCounter {
    pub fn new(limit: u32) -> WindowCounter {
        WindowCounter {
            limit: limit.max(1),
            hits: std::collections::VecDeque::new(),
        }
    }

    pub fn hit(&mut self) -> bool {
        let now = Instant::now();
        while self
            .hits
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.hits.pop_front();
        }
        self.hits.push_back(now);
        self.hits.len() >= self.limit as usize
    }
}

/// One connection's limits.
#[derive(Debug)]
pub struct Limits {
    pub frames: TokenBucket,
    subs: TokenBucket,
    pubs: TokenBucket,
    sigs: TokenBucket,
    pub bad_frames: WindowCounter,
    pub rate_limited: WindowCounter,
    /// Set by a successful `refresh`: the session's new expiry.
    pub refreshed_exp: Option<i64>,
}

impl Limits {
    pub fn new(config: &EdgeConfig) -> Limits {
        Limits {
            frames: TokenBucket::new(config.frames_per_s, config.frame_burst),
            subs: bucket(config.sub_per_s, 1),
            pubs: bucket(config.pub_per_s, 1),
            sigs: bucket(config.sig_per_s, 1),
            bad_frames: WindowCounter::new(config.max_bad_frames),
            rate_limited: WindowCounter::new(RATE_LIMIT_STRIKES),
            refreshed_exp: None,
        }
    }

    /// Takes one `op` from this connection's bucket and from its user's.
    pub fn take(&mut self, op: Op, user: &UserSlot) -> bool {
        let mine = match op {
            Op::Sub => &mut self.subs,
            Op::Pub => &mut self.pubs,
            Op::Sig => &mut self.sigs,
        };
        mine.take() && user.take(op)
    }
}

/// A bucket holding three seconds' worth of `rate`, times `factor`.
fn bucket(rate: u32, factor: u32) -> TokenBucket {
    let rate = rate.saturating_mul(factor);
    TokenBucket::new(rate, rate.saturating_mul(3))
}

#[derive(Debug)]
struct UserState {
    connections: usize,
    subs: TokenBucket,
    pubs: TokenBucket,
    sigs: TokenBucket,
}

/// Users with open connections on this edge.
#[derive(Debug)]
pub struct Users {
    max_connections: usize,
    rates: (u32, u32, u32),
    users: Mutex<HashMap<Arc<str>, UserState>>,
    unauthenticated: AtomicUsize,
    max_unauthenticated: usize,
    /// Sockets waiting for `hello`, per client address.
    pending: Mutex<HashMap<IpAddr, usize>>,
    max_pending_per_ip: usize,
    /// When the edge last warned that one address holds most pending sockets.
    warned: Mutex<Option<Instant>>,
}

impl Users {
    pub fn new(config: &EdgeConfig) -> Users {
        Users {
            max_connections: config.max_conns_per_user,
            rates: (config.sub_per_s, config.pub_per_s, config.sig_per_s),
            users: Mutex::default(),
            unauthenticated: AtomicUsize::new(0),
            max_unauthenticated: config.max_unauthenticated,
            pending: Mutex::default(),
            max_pending_per_ip: config.max_pending_per_ip.max(1),
            warned: Mutex::default(),
        }
    }

    /// Takes a connection slot for `user`; `None` when they have too many.
    pub fn admit(self: &Arc<Self>, user: &Arc<str>) -> Option<UserSlot> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        let (sub, publ, sig) = self.rates;
        let state = users.entry(user.clone()).or_insert_with(|| UserState {
            connections: 0,
            subs: bucket(sub, USER_FACTOR),
            pubs: bucket(publ, USER_FACTOR),
            sigs: bucket(sig, USER_FACTOR),
        });
        if state.connections >= self.max_connections {
            return None;
        }
        state.connections += 1;
        Some(UserSlot {
            users: self.clone(),
            user: user.clone(),
        })
    }

    /// Takes a slot for a socket from `address` that has yet to authenticate; `None`
    /// when the edge or that address has too many. `trusted` says whether the address
    /// came through a trusted proxy's `X-Forwarded-For` (else it is the peer's own).
    pub fn admit_unauthenticated(
        self: &Arc<Self>,
        address: IpAddr,
        forwarded: bool,
    ) -> Option<PendingSlot> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let count = pending.entry(address).or_insert(0);
        if *count >= self.max_pending_per_ip {
            return None;
        }
        let before = self.unauthenticated.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_unauthenticated {
            self.unauthenticated.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        *count += 1;
        let share = *count;
        drop(pending);
        if !forwarded {
            self.warn_if_one_address_dominates(address, share, before + 1);
        }
        Some(PendingSlot {
            users: self.clone(),
            address,
        })
    }

    /// Most pending sockets from one peer usually mean a proxy nobody listed in
    /// `SWITCHBOARD_TRUSTED_PROXIES`: then every client behind it shares one address's
    /// cap. Said at most once a minute.
    fn warn_if_one_address_dominates(&self, address: IpAddr, share: usize, total: usize) {
        const MIN_PENDING: usize = 32;
        if total < MIN_PENDING || share * 2 <= total {
            return;
        }
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
            return;
        }
        *warned = Some(Instant::now());
        tracing::warn!(
            %address,
            pending = share,
            of = total,
            "most sockets waiting for hello come from one address; if it is a proxy, list it \
             in SWITCHBOARD_TRUSTED_PROXIES (docs/operations.md), or its clients share one cap"
        );
    }
}

/// A user's place on this edge for one connection; freed on drop.
#[derive(Debug)]
pub struct UserSlot {
    users: Arc<Users>,
    user: Arc<str>,
}

impl UserSlot {
    fn take(&self, op: Op) -> bool {
        let mut users = self.users.users.lock().unwrap_or_else(|e| e.into_inner());
        let Some(state) = users.get_mut(&self.user) else {
            return false;
        };
        match op {
            Op::Sub => state.subs.take(),
            Op::Pub => state.pubs.take(),
            Op::Sig => state.sigs.take(),
        }
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut users = self.users.users.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = users.get_mut(&self.user) {
            state.connections -= 1;
            if state.connections == 0 {
                users.remove(&self.user);
            }
        }
    }
}

/// A not-yet-authenticated socket's place; freed on drop.
#[derive(Debug)]
pub struct PendingSlot {
    users: Arc<Users>,
    address: IpAddr,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.users.unauthenticated.fetch_sub(1, Ordering::AcqRel);
        let mut pending = self.users.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = pending.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                pending.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let mut bucket = TokenBucket::new(1, 3);
        assert!((0..3).all(|_| bucket.take()), "the burst");
        assert!(!bucket.take(), "then nothing until it refills");
        std::thread::sleep(Duration::from_millis(1100));
        assert!(bucket.take(), "one per second");
        assert!(!bucket.take());
    }

    #[test]
    fn a_window_counter_reaches_its_limit_within_a_minute() {
        let mut counter = WindowCounter::new(3);
        assert!(!counter.hit());
        assert!(!counter.hit());
        assert!(counter.hit(), "the third hit in a minute is the limit");
    }
}
