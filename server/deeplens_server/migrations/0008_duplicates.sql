-- Duplicate links recorded at ingest, the groups they form (kept current, so listing is a read), and review
-- decisions keyed by content so they outlive names, re-scans and model changes.
ALTER TABLE images
    ADD COLUMN location_id text NOT NULL DEFAULT '',
    ADD COLUMN group_id text,
    -- 256-bit pHash + dHash (hex), and 'phash:dhash:detail' of the image's flips and rotations.
    ADD COLUMN detail_hash text NOT NULL DEFAULT '',
    ADD COLUMN hash_variants text[] NOT NULL DEFAULT '{}',
    -- The pHash's four 16-bit bands ('0a3f2', ...), for finding close hashes through an index.
    ADD COLUMN phash_bands text[] NOT NULL DEFAULT '{}';
CREATE INDEX images_by_phash_band ON images USING gin (phash_bands);
-- Per-tenant overrides of the duplicate thresholds ({} = the server defaults).
ALTER TABLE tenants ADD COLUMN duplicate_policy jsonb NOT NULL DEFAULT '{}';
CREATE INDEX images_by_group ON images (tenant_id, group_id) WHERE group_id IS NOT NULL;

-- One row per pair, (a_collection, a_image) < (b_collection, b_image). No foreign key to images: a link may
-- be written a moment before the other image's row commits; grouping only ever joins images that exist.
CREATE TABLE duplicate_links (
    tenant_id      text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    a_collection   text NOT NULL,
    a_image        text NOT NULL,
    b_collection   text NOT NULL,
    b_image        text NOT NULL,
    a_sha256       text NOT NULL,
    b_sha256       text NOT NULL,
    tier           smallint NOT NULL,
    rule           text NOT NULL,
    phash_distance smallint NOT NULL,
    dhash_distance smallint NOT NULL,
    detail_distance smallint NOT NULL,
    cosine         real NOT NULL,
    create_time    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, a_collection, a_image, b_collection, b_image)
);
CREATE INDEX duplicate_links_by_b ON duplicate_links (tenant_id, b_collection, b_image);

CREATE TABLE duplicate_groups (
    tenant_id         text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    id                text NOT NULL,
    members           integer NOT NULL,
    total_bytes       bigint NOT NULL,
    reclaimable_bytes bigint NOT NULL,
    resolved          boolean NOT NULL DEFAULT false,
    keeper_collection text NOT NULL,
    keeper_image      text NOT NULL,
    version           bigint NOT NULL DEFAULT 1,
    create_time       timestamptz NOT NULL DEFAULT now(),
    update_time       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX duplicate_groups_by_size ON duplicate_groups (tenant_id, resolved, reclaimable_bytes DESC, id);

-- sha_a <= sha_b.
CREATE TABLE duplicate_decisions (
    tenant_id   text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    sha_a       text NOT NULL,
    sha_b       text NOT NULL,
    decision    smallint NOT NULL,
    actor       text NOT NULL DEFAULT '',
    time        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, sha_a, sha_b)
);

ALTER TABLE duplicate_links ENABLE ROW LEVEL SECURITY;
ALTER TABLE duplicate_links FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON duplicate_links
    USING (deeplens_visible(tenant_id)) WITH CHECK (deeplens_visible(tenant_id));
ALTER TABLE duplicate_groups ENABLE ROW LEVEL SECURITY;
ALTER TABLE duplicate_groups FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON duplicate_groups
    USING (deeplens_visible(tenant_id)) WITH CHECK (deeplens_visible(tenant_id));
ALTER TABLE duplicate_decisions ENABLE ROW LEVEL SECURITY;
ALTER TABLE duplicate_decisions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON duplicate_decisions
    USING (deeplens_visible(tenant_id)) WITH CHECK (deeplens_visible(tenant_id));
