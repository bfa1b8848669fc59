-- Row-level security: every tenant-owned row is visible only inside a transaction scoped to its tenant
-- (SET LOCAL deeplens.tenant) or to the platform (SET LOCAL deeplens.scope = 'platform'). FORCE applies it to
-- the tables' owner too; only superusers and BYPASSRLS roles escape it, and the server warns about those.
CREATE FUNCTION deeplens_visible(row_tenant text) RETURNS boolean
    LANGUAGE sql STABLE
    AS $$
        SELECT coalesce(current_setting('deeplens.scope', true), '') = 'platform'
            OR (row_tenant IS NOT NULL AND row_tenant = current_setting('deeplens.tenant', true))
    $$;

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants USING (deeplens_visible(id)) WITH CHECK (deeplens_visible(id));

ALTER TABLE images ENABLE ROW LEVEL SECURITY;
ALTER TABLE images FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON images USING (deeplens_visible(tenant_id)) WITH CHECK (deeplens_visible(tenant_id));

ALTER TABLE operations ENABLE ROW LEVEL SECURITY;
ALTER TABLE operations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON operations USING (deeplens_visible(tenant_id)) WITH CHECK (deeplens_visible(tenant_id));

ALTER TABLE collections ENABLE ROW LEVEL SECURITY;
ALTER TABLE collections FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON collections USING (deeplens_visible(tenant_id)) WITH CHECK (deeplens_visible(tenant_id));

ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys USING (deeplens_visible(tenant_id)) WITH CHECK (deeplens_visible(tenant_id));

ALTER TABLE audit_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_events USING (deeplens_visible(tenant_id)) WITH CHECK (deeplens_visible(tenant_id));

ALTER TABLE storage_locations ENABLE ROW LEVEL SECURITY;
ALTER TABLE storage_locations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON storage_locations
    USING (deeplens_visible(tenant_id)) WITH CHECK (deeplens_visible(tenant_id));
