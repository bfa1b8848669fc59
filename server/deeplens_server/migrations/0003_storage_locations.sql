-- Bring-your-own-storage locations. Credentials are AES-256-GCM sealed, bound to the location's name.
CREATE TABLE storage_locations (
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id            text NOT NULL,
    display_name  text NOT NULL DEFAULT '',
    uri           text NOT NULL,
    options       jsonb NOT NULL DEFAULT '{}',
    credentials   bytea,
    credential_hints jsonb NOT NULL DEFAULT '{}',
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now(),
    version       bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (tenant_id, id)
);
