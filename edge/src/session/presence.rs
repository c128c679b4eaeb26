//! Presence and typing: this connection's entry in the `presence` bucket, its occupancy
//! of channels with presence (`join`/`leave`), signals and the `typing` throttle
//! (docs/protocol.md, sections 4.5, 4.11 and 9).

use super::*;

impl Session {
    /// `sig`: an ephemeral signal to the channel (docs/protocol.md, section 4.5).
    pub(super) async fn on_sig(
        &mut self,
        id: Option<u64>,
        ch: ChannelName,
        ty: SignalType,
        data: RawJson,
    ) {
        if !self.limits.take(Op::Sig, &self.slot) {
            return self.rate_limited(id, "too many signals");
        }
        if let Err(why) = self
            .edge
            .policy
            .may_signal(&self.identity, &ch, &self.edge.members)
        {
            return self.refuse(id, Refusal::forbidden(why));
        }
        if ty.as_str() == TYPING && !self.typing_allowed(&ch, &data) {
            return;
        }
        self.send_signal(&ch, ty, data).await;
    }

    /// `presence`: this connection's status and text (docs/protocol.md, section 4.11).
    pub(super) async fn on_presence(
        &mut self,
        id: Option<u64>,
        status: PresenceStatus,
        text: Option<String>,
    ) {
        if text.as_ref().is_some_and(|t| t.len() > MAX_STATUS_TEXT) {
            return self.bad_frame(id, Refusal::bad_request("status text is too long"));
        }
        let was_visible = self.me.status != PresenceStatus::Invisible;
        let visible = status != PresenceStatus::Invisible;
        self.me.status = status;
        self.me.text = text;
        self.put_presence().await;
        // Turning invisible looks like leaving to the channels, and back like joining.
        if was_visible != visible {
            let kind = if visible { JOIN } else { LEAVE };
            let channels: Vec<ChannelName> = self
                .subs
                .labels()
                .filter(|c| self.has_presence(c))
                .cloned()
                .collect();
            for channel in channels {
                self.announce(&channel, kind).await;
            }
        }
        let occupied: Vec<ChannelName> = self
            .subs
            .labels()
            .filter(|c| self.has_presence(c))
            .cloned()
            .collect();
        for channel in occupied {
            self.edge
                .presence
                .put(
                    self.occupancy_subject(&channel),
                    self.me.occupancy(&self.edge.id),
                )
                .await;
        }
        self.reply(ServerFrame::ok(id).encode());
    }

    /// Whether `channel`'s namespace has channel presence (`who`, join/leave).
    pub(super) fn has_presence(&self, channel: &ChannelName) -> bool {
        self.edge.policy.rule(channel.namespace()).presence
    }

    pub(super) fn occupancy_subject(&self, channel: &ChannelName) -> String {
        occupancy_subject(&channel.base(), &self.identity.user, &self.session_id)
    }

    /// Writes this connection's entry in the `presence` bucket.
    pub(super) async fn put_presence(&self) {
        let value = self
            .me
            .encode(&self.identity.user, &self.session_id, &self.edge.id);
        self.edge
            .presence
            .put(
                presence_subject(&self.identity.user, &self.session_id),
                value,
            )
            .await;
    }

    /// Marks this connection present on `channel` and tells the channel (`join`).
    pub(super) async fn occupy(&mut self, channel: &ChannelName) {
        self.edge
            .presence
            .put(
                self.occupancy_subject(channel),
                self.me.occupancy(&self.edge.id),
            )
            .await;
        if self.me.status != PresenceStatus::Invisible {
            self.announce(channel, JOIN).await;
        }
    }

    /// The reverse of [`occupy`](Self::occupy) (`leave`).
    pub(super) async fn vacate(&mut self, channel: &ChannelName) {
        self.edge
            .presence
            .delete(self.occupancy_subject(channel))
            .await;
        if self.me.status != PresenceStatus::Invisible {
            self.announce(channel, LEAVE).await;
        }
    }

    /// Sends `join` or `leave` on `channel` if this user's privacy setting lets everyone
    /// there see them (docs/protocol.md, section 9.4). Until the setting is known they
    /// wait; a `leave` whose `join` still waits cancels it, and neither is sent.
    pub(super) async fn announce(&mut self, channel: &ChannelName, kind: &'static str) {
        let VisibilityState::Known(visibility) = self.visibility else {
            // Asked the first time it matters: most connections never join a channel with
            // presence, and need not cost the presence service a query.
            if self.visibility == VisibilityState::Unknown {
                self.ask_visibility();
            }
            let waiting_join = self
                .deferred
                .iter()
                .position(|(c, k)| c == channel && *k == JOIN);
            match (kind, waiting_join) {
                (LEAVE, Some(at)) => {
                    self.deferred.remove(at);
                }
                _ => self.deferred.push((channel.clone(), kind)),
            }
            return;
        };
        if visibility.announces_on(channel) {
            self.send_signal(
                channel,
                SignalType::parse(kind).ok(),
                RawJson::empty_object(),
            )
            .await;
        }
    }

    /// The user's setting changed: ask again, unless it was never needed.
    pub(super) fn visibility_changed(&mut self) {
        if self.visibility != VisibilityState::Unknown {
            self.ask_visibility();
        }
    }

    /// Asks how this user shows themself, in a task: the answer comes back as
    /// [`Done::Visibility`]. Unanswered, nobody is told (the private choice).
    fn ask_visibility(&mut self) {
        self.visibility = VisibilityState::Asking;
        let (edge, identity, done) = (self.edge.clone(), self.identity.clone(), self.done.clone());
        let changes = edge.hub.changes();
        self.tasks.spawn(async move {
            let visibility = match crate::privacy::own_visibility(&edge, &identity).await {
                Ok(visibility) => visibility,
                Err(refusal) => {
                    tracing::warn!(%refusal, "privacy setting unknown: no join/leave for now");
                    Visibility::Nobody
                }
            };
            done.push(Done::Visibility {
                visibility,
                changes,
            });
        });
    }

    /// The setting is known: the `join`s and `leave`s that waited for it go out. An
    /// answer to a question asked before the edge was told of a privacy change may be
    /// stale (and the change may have missed this session, if it was on no channel yet):
    /// it is asked again instead (docs/protocol.md, section 9.4).
    pub(super) async fn visibility_known(&mut self, visibility: Visibility, changes: u64) {
        if changes != self.edge.hub.changes() {
            return self.ask_visibility();
        }
        self.visibility = VisibilityState::Known(visibility);
        for (channel, kind) in std::mem::take(&mut self.deferred) {
            self.announce(&channel, kind).await;
        }
    }

    /// Publishes a signal from this connection; it will not come back to it.
    pub(super) async fn send_signal(
        &self,
        channel: &ChannelName,
        ty: impl Into<Option<SignalType>>,
        data: RawJson,
    ) {
        let Some(ty) = ty.into() else { return };
        let signal = SignalMessage {
            from: self.identity.user.to_string(),
            ty,
            data,
        };
        let Ok(payload) = serde_json::to_vec(&signal) else {
            return;
        };
        let mut h = async_nats::HeaderMap::new();
        h.insert(RT_ORIGIN, self.edge.bridge.origin(self.control.id).as_str());
        let subject = channel.base().subject(SubjectKind::Signal);
        // Signals are lossy by design; a failed publish is only logged.
        if let Err(e) = self
            .edge
            .nats
            .publish_with_headers(subject, h, payload.into())
            .await
        {
            tracing::debug!(error = %e, "signal publish failed");
        }
    }

    /// Throttles `typing`: a repeat of the same state within the window is dropped.
    pub(super) fn typing_allowed(&mut self, channel: &ChannelName, data: &RawJson) -> bool {
        #[derive(serde::Deserialize)]
        struct Typing {
            typing: Option<bool>,
        }
        let typing = data
            .decode::<Typing>()
            .ok()
            .and_then(|t| t.typing)
            .unwrap_or(true);
        let now = Instant::now();
        if let Some((at, was)) = self.typing.get(channel)
            && *was == typing
            && now.duration_since(*at) < TYPING_WINDOW
        {
            return false;
        }
        self.typing.insert(channel.clone(), (now, typing));
        true
    }

    /// A connection that ends while typing tells the others it stopped.
    pub(super) async fn stop_typing(&mut self) {
        let typing: Vec<ChannelName> = self
            .typing
            .drain()
            .filter(|(_, (_, typing))| *typing)
            .map(|(channel, _)| channel)
            .collect();
        for channel in typing {
            let data = RawJson::encode(&serde_json::json!({ "typing": false }))
                .unwrap_or_else(|_| RawJson::null());
            self.send_signal(&channel, SignalType::parse(TYPING).ok(), data)
                .await;
        }
    }
}
