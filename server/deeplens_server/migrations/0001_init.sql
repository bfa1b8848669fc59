-- Tenants, images and long-running operations. Every tenant-owned table is keyed by tenant_id first.
CREATE TABLE tenants (
    id            text PRIMARY KEY,
    display_name  text NOT NULL DEFAULT '',
    create_time   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE images (
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    collection_id text NOT NULL,
    image_id      text NOT NULL,
    sha256        text NOT NULL,
    storage_uri   text NOT NULL,
    format        text NOT NULL,
    width         integer NOT NULL,
    height        integer NOT NULL,
    size_bytes    bigint NOT NULL,
    phash         text NOT NULL,
    dhash         text NOT NULL,
    tags          text[] NOT NULL DEFAULT '{}',
    model         text NOT NULL,
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, collection_id, image_id)
);
CREATE INDEX images_by_sha256 ON images (tenant_id, sha256);

CREATE TABLE operations (
    tenant_id     text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id            text NOT NULL,
    kind          text NOT NULL,
    state         smallint NOT NULL,
    stage         text NOT NULL DEFAULT 'queued',
    total         bigint NOT NULL DEFAULT 0,
    processed     bigint NOT NULL DEFAULT 0,
    succeeded     bigint NOT NULL DEFAULT 0,
    failed        bigint NOT NULL DEFAULT 0,
    request_id    text,
    payload       jsonb NOT NULL DEFAULT '{}',
    response      bytea,
    error         bytea,
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now(),
    end_time      timestamptz,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX operations_by_request_id ON operations (tenant_id, request_id) WHERE request_id IS NOT NULL;
