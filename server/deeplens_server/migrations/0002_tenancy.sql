-- API keys with roles, collections as rows, per-tenant limits, soft-deleted tenants, and the audit log.
ALTER TABLE tenants
    ADD COLUMN update_time timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN delete_time timestamptz,
    ADD COLUMN version bigint NOT NULL DEFAULT 1,
    ADD COLUMN max_images bigint NOT NULL DEFAULT 0,
    ADD COLUMN max_image_bytes bigint NOT NULL DEFAULT 0,
    ADD COLUMN max_image_pixels bigint NOT NULL DEFAULT 0,
    ADD COLUMN requests_per_second integer NOT NULL DEFAULT 0,
    ADD COLUMN max_concurrent_operations integer NOT NULL DEFAULT 0;

CREATE TABLE collections (
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id            text NOT NULL,
    display_name  text NOT NULL DEFAULT '',
    create_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
INSERT INTO collections (tenant_id, id) SELECT DISTINCT tenant_id, collection_id FROM images;

-- tenant_id NULL: a platform key.
CREATE TABLE api_keys (
    id            text PRIMARY KEY,
    tenant_id     text REFERENCES tenants (id) ON DELETE CASCADE,
    role          smallint NOT NULL,
    display_name  text NOT NULL DEFAULT '',
    secret_sha256 bytea NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    revoke_time   timestamptz,
    last_use_time timestamptz
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, id);

CREATE TABLE audit_events (
    id            bigserial PRIMARY KEY,
    tenant_id     text,
    actor         text NOT NULL,
    method        text NOT NULL,
    resource      text NOT NULL DEFAULT '',
    outcome       text NOT NULL,
    time          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_by_tenant ON audit_events (tenant_id, id DESC);
CREATE INDEX operations_active ON operations (tenant_id) WHERE end_time IS NULL;
