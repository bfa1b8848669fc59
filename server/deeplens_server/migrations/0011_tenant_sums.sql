-- The sums over all of a tenant's images (GetTenantStats, GetStorageReport, the count of embedded images)
-- read this index alone, an index-only scan, instead of every whole row (~1.8 kB each with EXIF and hash
-- variants: 1.9 GB at 1M images, against ~0.1 GB here). Building it holds writes to the table until it is
-- built; a large deployment may build these indexes beforehand with CREATE INDEX CONCURRENTLY
-- under the same names, which this migration then keeps.
CREATE INDEX IF NOT EXISTS images_usage ON images (tenant_id, collection_id, image_id)
    INCLUDE (location_id, size_bytes, group_id, model);

-- A tenant's items still waiting, counted without reading its finished history.
CREATE INDEX IF NOT EXISTS operation_items_pending ON operation_items (tenant_id) WHERE state = 1;

-- A tenant's operations by state (one per IngestImage call: there may be millions), from the index alone.
CREATE INDEX IF NOT EXISTS operations_by_state ON operations (tenant_id, state);

-- Row-level security, same rule (the platform scope sees every row, a tenant scope its own rows), read once
-- per statement. deeplens_visible() read both settings for every row a policy let through: ~40 % of an
-- index-only count over 1M images. Its calls, marked parallel unsafe, also kept PostgreSQL from scanning in
-- parallel. The policies below read the settings through uncorrelated sub-selects, which PostgreSQL
-- evaluates once (initplans) and hands to parallel workers.
CREATE FUNCTION deeplens_platform_scope() RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT coalesce(current_setting('deeplens.scope', true), '') = 'platform' $$;
CREATE FUNCTION deeplens_scope_tenant() RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT current_setting('deeplens.tenant', true) $$;

ALTER POLICY tenant_isolation ON tenants
    USING ((SELECT deeplens_platform_scope()) OR id = (SELECT deeplens_scope_tenant()))
    WITH CHECK ((SELECT deeplens_platform_scope()) OR id = (SELECT deeplens_scope_tenant()));
ALTER POLICY tenant_isolation ON images
    USING ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()))
    WITH CHECK ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()));
ALTER POLICY tenant_isolation ON operations
    USING ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()))
    WITH CHECK ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()));
ALTER POLICY tenant_isolation ON collections
    USING ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()))
    WITH CHECK ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()));
ALTER POLICY tenant_isolation ON api_keys
    USING ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()))
    WITH CHECK ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()));
ALTER POLICY tenant_isolation ON audit_events
    USING ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()))
    WITH CHECK ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()));
ALTER POLICY tenant_isolation ON storage_locations
    USING ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()))
    WITH CHECK ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()));
ALTER POLICY tenant_isolation ON operation_items
    USING ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()))
    WITH CHECK ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()));
ALTER POLICY tenant_isolation ON storage_objects
    USING ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()))
    WITH CHECK ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()));
ALTER POLICY tenant_isolation ON duplicate_links
    USING ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()))
    WITH CHECK ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()));
ALTER POLICY tenant_isolation ON duplicate_groups
    USING ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()))
    WITH CHECK ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()));
ALTER POLICY tenant_isolation ON duplicate_decisions
    USING ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()))
    WITH CHECK ((SELECT deeplens_platform_scope()) OR tenant_id = (SELECT deeplens_scope_tenant()));

-- Fails if any policy still calls it.
DROP FUNCTION deeplens_visible(text);

-- An index-only scan reads the row itself for every page not yet marked all-visible, which VACUUM does. By
-- default autovacuum comes after a fifth of the table is new rows (200k images at 1M); at 2 % the sums stay
-- near their index-only cost through a bulk load.
ALTER TABLE images SET (autovacuum_vacuum_insert_scale_factor = 0.02);
