-- Erasure (docs/protocol.md §10.14, docs/operations.md §12 "Erasure"): the ids of the
-- events `erase.user` / `erase.channel` removed, written before the events leave EVENTS.
-- A job that had fetched such an event before it left (the archive, the notifications)
-- cannot copy it into PostgreSQL afterwards: the triggers below drop those rows. Rows
-- older than 7 days are pruned by the next erasure; no job holds a message that long.
CREATE TABLE switchboard.erased_events (
    event_id  text        PRIMARY KEY,
    erased_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX erased_events_by_age ON switchboard.erased_events (erased_at);

CREATE FUNCTION switchboard.skip_erased() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM switchboard.erased_events WHERE event_id = NEW.event_id) THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER archive_skip_erased BEFORE INSERT ON switchboard.archive
    FOR EACH ROW EXECUTE FUNCTION switchboard.skip_erased();
CREATE TRIGGER notifications_skip_erased BEFORE INSERT ON switchboard.notifications
    FOR EACH ROW EXECUTE FUNCTION switchboard.skip_erased();
CREATE TRIGGER notification_deliveries_skip_erased BEFORE INSERT ON switchboard.notification_deliveries
    FOR EACH ROW EXECUTE FUNCTION switchboard.skip_erased();
