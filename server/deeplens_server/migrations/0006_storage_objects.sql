-- What the last scan of each storage location saw, to make re-scans incremental.
CREATE TABLE storage_objects (
    tenant_id     text NOT NULL,
    location_id   text NOT NULL,
    path          text NOT NULL,
    size_bytes    bigint NOT NULL,
    etag          text NOT NULL DEFAULT '',
    last_modified timestamptz,
    collection_id text NOT NULL,
    image_id      text NOT NULL,
    seen_time     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, location_id, path),
    FOREIGN KEY (tenant_id, location_id) REFERENCES storage_locations (tenant_id, id) ON DELETE CASCADE
);
ALTER TABLE storage_objects ENABLE ROW LEVEL SECURITY;
ALTER TABLE storage_objects FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON storage_objects
    USING (deeplens_visible(tenant_id)) WITH CHECK (deeplens_visible(tenant_id));
