//! `ack` and `read`: delivery and read cursors, coalesced per conversation and sent to
//! the receipts worker on `cmd.receipts.<id>` (docs/protocol.md, section 4.6).

use super::*;

impl Session {
    pub(super) fn on_receipt(
        &mut self,
        id: Option<u64>,
        ch: ChannelName,
        delivered: Option<u64>,
        read: Option<u64>,
    ) {
        if let Err(why) = self
            .edge
            .policy
            .may_receipt(&self.identity, &ch, &self.edge.members)
        {
            return self.refuse(id, Refusal::forbidden(why));
        }
        let cursor = self.receipts.entry(ch).or_insert((0, 0));
        // `read` implies `delivered`; both are cumulative.
        let read = read.unwrap_or(0);
        cursor.1 = cursor.1.max(read);
        cursor.0 = cursor.0.max(delivered.unwrap_or(0)).max(read);
        self.receipts_due
            .get_or_insert_with(|| tokio::time::Instant::now() + RECEIPT_WINDOW);
    }

    /// Sends the coalesced cursors to the receipts worker through the `CMDS` stream.
    pub(super) fn flush_receipts(&mut self) {
        self.receipts_due = None;
        if self.receipts.is_empty() {
            return;
        }
        let user = self.identity.user.to_string();
        let commands: Vec<ReceiptCommand> = self
            .receipts
            .drain()
            .map(|(conversation, (delivered, read))| ReceiptCommand {
                conversation,
                user: user.clone(),
                delivered: (delivered > 0).then_some(delivered),
                read: (read > 0).then_some(read),
            })
            .collect();
        let js = async_nats::jetstream::new(self.edge.nats.clone());
        tokio::spawn(async move {
            for command in commands {
                let Ok(payload) = serde_json::to_vec(&command) else {
                    continue;
                };
                let sent = async {
                    js.publish(command.subject(), payload.into()).await?.await?;
                    Ok::<_, async_nats::Error>(())
                };
                if let Err(e) = sent.await {
                    tracing::warn!(error = %e, "receipt command not stored");
                }
            }
        });
    }
}
