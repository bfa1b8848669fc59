-- Operations of many items. Each item is counted exactly once, when it leaves PENDING, in the same
-- transaction that updates its operation's counters; re-delivered jobs find it no longer pending.
ALTER TABLE operations
    ADD COLUMN start_time timestamptz,
    ADD COLUMN duplicates bigint NOT NULL DEFAULT 0,
    ADD COLUMN paused boolean NOT NULL DEFAULT false,
    ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false,
    ADD COLUMN generation integer NOT NULL DEFAULT 0;

CREATE TABLE operation_items (
    tenant_id     text NOT NULL,
    operation_id  text NOT NULL,
    item          integer NOT NULL,
    state         smallint NOT NULL,
    source        jsonb NOT NULL,
    error         bytea,
    update_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, operation_id, item),
    FOREIGN KEY (tenant_id, operation_id) REFERENCES operations (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX operation_items_by_state ON operation_items (tenant_id, operation_id, state, item);

ALTER TABLE operation_items ENABLE ROW LEVEL SECURITY;
ALTER TABLE operation_items FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON operation_items
    USING (deeplens_visible(tenant_id)) WITH CHECK (deeplens_visible(tenant_id));

-- Single-image operations made before items existed become one-item operations.
INSERT INTO operation_items (tenant_id, operation_id, item, state, source, error)
SELECT tenant_id, id, 0,
       CASE WHEN end_time IS NULL THEN 1 WHEN error IS NULL THEN 3 ELSE 4 END,
       payload, error
FROM operations WHERE kind = 'ingest_image';
