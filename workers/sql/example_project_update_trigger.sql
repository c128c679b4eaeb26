-- Example: emit `project.update` on `project:<id>` whenever a row of the application's
-- own `projects` table is inserted or changed, in the same transaction as the change.
-- If the transaction rolls back, no event is published; once it commits, the outbox
-- relay publishes the event (event id = Nats-Msg-Id), exactly once.
--
-- Assumes `projects.id` is text or an integer matching [A-Za-z0-9_-]{1,128}. The actor
-- is taken from the transaction-local setting `switchboard.actor` when the application
-- sets it, e.g.:
--   SET LOCAL switchboard.actor = '{"id":"user_456","type":"homeowner"}';
CREATE OR REPLACE FUNCTION emit_project_update() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NEW;   -- nothing changed: no event
    END IF;
    PERFORM switchboard.emit(
        'project:' || NEW.id,
        'project.update',
        jsonb_build_object('op', lower(TG_OP), 'project', to_jsonb(NEW)),
        NULLIF(current_setting('switchboard.actor', true), '')::jsonb
    );
    RETURN NEW;
END;
$$;

CREATE TRIGGER projects_emit_update
    AFTER INSERT OR UPDATE ON projects
    FOR EACH ROW EXECUTE FUNCTION emit_project_update();
