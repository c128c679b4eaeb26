//! The presence board: every user's live connections, what was last published about
//! each user, and the transitions between the two.
//!
//! # The aggregate
//!
//! What others see of a user ([`Summary`]) is computed from their live connections:
//!
//! - `status`: [`VisibleStatus::aggregate`], `busy` > `online` > `away`; invisible
//!   connections are left out, so a user invisible everywhere (or with no connection) is
//!   `offline`;
//! - `devices`: the connections that are not invisible;
//! - `text`: the text of the visible connection whose status or text changed most
//!   recently, among those that have one. A refresh that repeats an entry does not count
//!   as a change, so two devices with different texts do not take turns.
//!
//! # Transitions
//!
//! A transition is due when a user's summary differs from the last one published for
//! them (a user never published is offline). Each names its [`Cause`]: the bucket
//! revision that produced it, from which the event id is derived, so every copy of the
//! worker that sees the same revision publishes the same event id and JetStream keeps
//! one.
//!
//! Pure: no I/O, no clock (callers pass the times in).

use std::collections::{HashMap, HashSet};

use switchboard_schemas::{EventId, PresenceStatus, UserId, VisibleStatus};
use time::OffsetDateTime;

use super::entry::{Change, Key};

/// A user as others see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub status: VisibleStatus,
    pub devices: u32,
    pub text: Option<String>,
}

impl Summary {
    pub fn offline() -> Summary {
        Summary {
            status: VisibleStatus::Offline,
            devices: 0,
            text: None,
        }
    }

    pub fn is_offline(&self) -> bool {
        self.status == VisibleStatus::Offline
    }
}

/// A write to the bucket: its revision (stream sequence) and when it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub revision: u64,
    pub at: OffsetDateTime,
}

/// The last summary published for a user, and the revision that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub summary: Summary,
    pub revision: u64,
}

/// Why a transition is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The bucket write at this revision (a put, a delete, an expiry marker).
    Revision(u64),
    /// Every trace of the user left the bucket while no worker watched (even the delete
    /// markers expired); `after` is the revision of the last published summary.
    Vanished { after: u64 },
}

/// A summary to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub user: UserId,
    pub summary: Summary,
    pub cause: Cause,
    /// When it happened: the time of the bucket write, or the caller's "now" for a
    /// vanished user. An offline summary's `lastSeen`.
    pub at: OffsetDateTime,
}

impl Transition {
    /// The event id: the same for the same (user, cause) in every copy of the worker.
    pub fn event_id(&self) -> EventId {
        let user = self.user.as_str();
        match self.cause {
            Cause::Revision(revision) => {
                EventId::derive(&["user.presence", user, &revision.to_string()])
            }
            Cause::Vanished { after } => {
                EventId::derive(&["user.presence", user, "vanished", &after.to_string()])
            }
        }
    }

    /// The revision stored with the published summary, as a watermark.
    pub fn revision(&self) -> u64 {
        match self.cause {
            Cause::Revision(revision) => revision,
            Cause::Vanished { after } => after,
        }
    }
}

#[derive(Debug, Clone)]
struct Connection {
    status: PresenceStatus,
    text: Option<String>,
    /// The revision at which status or text last changed.
    changed: u64,
}

#[derive(Debug, Default)]
struct User {
    connections: HashMap<String, Connection>,
    /// The newest write seen for any of the user's keys, markers included.
    last: Option<Mark>,
}

impl User {
    fn summary(&self) -> Summary {
        let visible = || {
            self.connections
                .iter()
                .filter(|(_, c)| c.status != PresenceStatus::Invisible)
        };
        let text = visible()
            .filter(|(_, c)| c.text.is_some())
            .max_by(|(a_name, a), (b_name, b)| (a.changed, a_name).cmp(&(b.changed, b_name)))
            .and_then(|(_, c)| c.text.clone());
        Summary {
            status: VisibleStatus::aggregate(self.connections.values().map(|c| c.status)),
            devices: u32::try_from(visible().count()).unwrap_or(u32::MAX),
            text,
        }
    }
}

/// Every user's connections and last published summary.
#[derive(Debug, Default)]
pub struct Board {
    users: HashMap<UserId, User>,
    /// Only users whose last published summary is not offline.
    published: HashMap<UserId, Published>,
}

impl Board {
    /// A board that knows what was published before (read back after a restart) and no
    /// connections yet.
    pub fn new(published: impl IntoIterator<Item = (UserId, Published)>) -> Board {
        Board {
            users: HashMap::new(),
            published: published
                .into_iter()
                .filter(|(_, p)| !p.summary.is_offline())
                .collect(),
        }
    }

    /// Applies one bucket write.
    pub fn observe(&mut self, key: Key, change: Change, mark: Mark) {
        let user = self.users.entry(key.user).or_default();
        if user.last.is_none_or(|last| last.revision < mark.revision) {
            user.last = Some(mark);
        }
        match change {
            Change::Live { status, text } => {
                let changed = match user.connections.get(&key.conn) {
                    Some(old) if old.status == status && old.text == text => old.changed,
                    _ => mark.revision,
                };
                user.connections.insert(
                    key.conn,
                    Connection {
                        status,
                        text,
                        changed,
                    },
                );
            }
            Change::Gone => {
                user.connections.remove(&key.conn);
            }
        }
    }

    /// The transition due for `user`, if their summary differs from the published one.
    /// `now` dates it when nothing in the bucket does.
    pub fn transition(&self, user: &UserId, now: OffsetDateTime) -> Option<Transition> {
        let state = self.users.get(user);
        let summary = state.map_or_else(Summary::offline, User::summary);
        let published = self.published.get(user);
        let before = published.map_or_else(Summary::offline, |p| p.summary.clone());
        if summary == before {
            return None;
        }
        let (cause, at) = match state.and_then(|s| s.last) {
            Some(mark) => (Cause::Revision(mark.revision), mark.at),
            None => (
                Cause::Vanished {
                    after: published.map_or(0, |p| p.revision),
                },
                now,
            ),
        };
        Some(Transition {
            user: user.clone(),
            summary,
            cause,
            at,
        })
    }

    /// Every transition due, for a board just rebuilt from the bucket: users with
    /// connections, and users published as present whose connections are all gone.
    pub fn transitions(&self, now: OffsetDateTime) -> Vec<Transition> {
        let users: HashSet<&UserId> = self.users.keys().chain(self.published.keys()).collect();
        let mut due: Vec<Transition> = users
            .into_iter()
            .filter_map(|user| self.transition(user, now))
            .collect();
        due.sort_by(|a, b| a.user.cmp(&b.user));
        due
    }

    /// Notes that `transition` was published.
    pub fn published(&mut self, transition: &Transition) {
        if transition.summary.is_offline() {
            self.published.remove(&transition.user);
        } else {
            self.published.insert(
                transition.user.clone(),
                Published {
                    summary: transition.summary.clone(),
                    revision: transition.revision(),
                },
            );
        }
    }

    /// Drops what is kept of `user` once they have no connection left and nothing is
    /// due for them, so the board holds only present users.
    pub fn settle(&mut self, user: &UserId) {
        let idle = self
            .users
            .get(user)
            .is_some_and(|state| state.connections.is_empty());
        if idle && !self.published.contains_key(user) {
            self.users.remove(user);
        }
    }

    /// [`Board::settle`] for every user.
    pub fn settle_all(&mut self) {
        let published = &self.published;
        self.users
            .retain(|user, state| !state.connections.is_empty() || published.contains_key(user));
    }

    /// Forgets every connection, keeping what was published: before reading the bucket
    /// again from the start.
    pub fn forget_connections(&mut self) {
        self.users.clear();
    }
}

#[cfg(test)]
mod tests {
    use PresenceStatus::*;

    use super::*;

    fn user(id: &str) -> UserId {
        UserId::parse(id).unwrap()
    }

    fn key(text: &str) -> Key {
        Key::parse(text).unwrap()
    }

    fn mark(revision: u64) -> Mark {
        Mark {
            revision,
            at: OffsetDateTime::from_unix_timestamp(1_700_000_000 + revision as i64).unwrap(),
        }
    }

    fn live(status: PresenceStatus, text: Option<&str>) -> Change {
        Change::Live {
            status,
            text: text.map(str::to_string),
        }
    }

    fn summary(status: VisibleStatus, devices: u32, text: Option<&str>) -> Summary {
        Summary {
            status,
            devices,
            text: text.map(str::to_string),
        }
    }

    /// Observes one write and publishes whatever it makes due, like the watcher does.
    fn step(board: &mut Board, k: &str, change: Change, revision: u64) -> Option<Transition> {
        let k = key(k);
        let who = k.user.clone();
        board.observe(k, change, mark(revision));
        let due = board.transition(&who, OffsetDateTime::UNIX_EPOCH);
        if let Some(t) = &due {
            board.published(t);
        }
        board.settle(&who);
        due
    }

    #[test]
    fn devices_come_and_go() {
        let mut board = Board::default();
        let t = step(&mut board, "u1.c1", live(Online, None), 1).unwrap();
        assert_eq!(t.summary, summary(VisibleStatus::Online, 1, None));
        assert_eq!(t.cause, Cause::Revision(1));
        let t = step(&mut board, "u1.c2", live(Online, None), 2).unwrap();
        assert_eq!(t.summary.devices, 2);
        // A refresh changes nothing.
        assert!(step(&mut board, "u1.c1", live(Online, None), 3).is_none());
        let t = step(&mut board, "u1.c1", Change::Gone, 4).unwrap();
        assert_eq!(t.summary, summary(VisibleStatus::Online, 1, None));
        let t = step(&mut board, "u1.c2", Change::Gone, 5).unwrap();
        assert_eq!(t.summary, Summary::offline());
        assert_eq!(t.at, mark(5).at);
        // The expiry marker of an entry already deleted changes nothing, and nothing is
        // kept of an offline user.
        assert!(step(&mut board, "u1.c2", Change::Gone, 6).is_none());
        assert!(board.users.is_empty() && board.published.is_empty());
    }

    #[test]
    fn busy_beats_online_beats_away_and_invisible_is_offline() {
        let mut board = Board::default();
        assert!(step(&mut board, "u1.c1", live(Invisible, Some("hidden")), 1).is_none());
        let t = step(&mut board, "u1.c2", live(Away, None), 2).unwrap();
        assert_eq!(t.summary, summary(VisibleStatus::Away, 1, None));
        let t = step(&mut board, "u1.c3", live(Online, None), 3).unwrap();
        assert_eq!(t.summary, summary(VisibleStatus::Online, 2, None));
        let t = step(&mut board, "u1.c2", live(Busy, None), 4).unwrap();
        assert_eq!(t.summary, summary(VisibleStatus::Busy, 2, None));
        let t = step(&mut board, "u1.c2", live(Invisible, None), 5).unwrap();
        assert_eq!(t.summary, summary(VisibleStatus::Online, 1, None));
        let t = step(&mut board, "u1.c3", live(Invisible, None), 6).unwrap();
        assert_eq!(t.summary, Summary::offline());
    }

    #[test]
    fn text_is_the_latest_changed_visible_one() {
        let mut board = Board::default();
        step(&mut board, "u1.c1", live(Online, Some("At home")), 1);
        let t = step(&mut board, "u1.c2", live(Online, Some("On site")), 2).unwrap();
        assert_eq!(t.summary.text.as_deref(), Some("On site"));
        // Refreshes of either device do not flip the text.
        assert!(step(&mut board, "u1.c1", live(Online, Some("At home")), 3).is_none());
        assert!(step(&mut board, "u1.c2", live(Online, Some("On site")), 4).is_none());
        let t = step(&mut board, "u1.c1", live(Online, Some("Driving")), 5).unwrap();
        assert_eq!(t.summary.text.as_deref(), Some("Driving"));
        // An invisible device's text is never shown.
        let t = step(&mut board, "u1.c1", live(Invisible, Some("Driving")), 6).unwrap();
        assert_eq!(
            t.summary,
            summary(VisibleStatus::Online, 1, Some("On site"))
        );
        let t = step(&mut board, "u1.c2", live(Online, None), 7).unwrap();
        assert_eq!(t.summary, summary(VisibleStatus::Online, 1, None));
    }

    #[test]
    fn a_rebuild_reports_only_real_transitions() {
        let published = |status, devices, revision| Published {
            summary: summary(status, devices, None),
            revision,
        };
        let mut board = Board::new([
            (user("same"), published(VisibleStatus::Online, 2, 10)),
            (user("fewer"), published(VisibleStatus::Online, 2, 11)),
            (user("deleted"), published(VisibleStatus::Busy, 1, 12)),
            (user("vanished"), published(VisibleStatus::Away, 1, 13)),
        ]);
        board.observe(key("same.a"), live(Online, None), mark(20));
        board.observe(key("same.b"), live(Online, None), mark(21));
        board.observe(key("fewer.a"), live(Online, None), mark(22));
        board.observe(key("fewer.b"), Change::Gone, mark(23));
        board.observe(key("deleted.a"), Change::Gone, mark(24));
        board.observe(key("new.a"), live(Busy, Some("Call")), mark(25));
        board.observe(key("ghost.a"), Change::Gone, mark(26));

        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let due = board.transitions(now);
        let names: Vec<&str> = due.iter().map(|t| t.user.as_str()).collect();
        assert_eq!(names, ["deleted", "fewer", "new", "vanished"]);
        assert_eq!(due[0].summary, Summary::offline());
        assert_eq!(
            (due[0].cause, due[0].at),
            (Cause::Revision(24), mark(24).at)
        );
        assert_eq!(due[1].summary.devices, 1);
        assert_eq!(
            due[2].summary,
            summary(VisibleStatus::Busy, 1, Some("Call"))
        );
        assert_eq!(due[3].cause, Cause::Vanished { after: 13 });
        assert_eq!(due[3].at, now);
        assert_ne!(due[3].event_id(), due[0].event_id());

        for t in &due {
            board.published(t);
        }
        board.settle_all();
        assert!(board.transitions(now).is_empty());
        let kept: HashSet<&str> = board.users.keys().map(UserId::as_str).collect();
        assert_eq!(kept, HashSet::from(["same", "fewer", "new"]));
    }

    #[test]
    fn event_ids_depend_on_user_and_cause_only() {
        let t = |u: &str, cause| Transition {
            user: user(u),
            summary: Summary::offline(),
            cause,
            at: OffsetDateTime::UNIX_EPOCH,
        };
        let a = t("u1", Cause::Revision(7));
        let mut same = t("u1", Cause::Revision(7));
        same.summary.devices = 3;
        assert_eq!(a.event_id(), same.event_id());
        assert_ne!(a.event_id(), t("u2", Cause::Revision(7)).event_id());
        assert_ne!(a.event_id(), t("u1", Cause::Revision(8)).event_id());
        assert_ne!(
            a.event_id(),
            t("u1", Cause::Vanished { after: 7 }).event_id()
        );
    }
}
