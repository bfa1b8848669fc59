-- Which embedding model version (`name@version`) serves each tenant: its searches embed queries with it and
-- read that version's vector collection. `reindex_model` is the version a running re-index operation
-- (`reindex_operation`) is filling; new images are embedded with both meanwhile. `embedding_generation`
-- moves on every change, so a worker that embedded under an older pointer knows to catch up.
-- NULL `embedding_model`: not chosen yet; the server's default is written on first use.
ALTER TABLE tenants
    ADD COLUMN embedding_model text,
    ADD COLUMN reindex_model text,
    ADD COLUMN reindex_operation text,
    ADD COLUMN embedding_generation bigint NOT NULL DEFAULT 0;

-- Tenants that already hold images keep the model those were embedded with.
UPDATE tenants t SET embedding_model = (SELECT min(i.model) FROM images i WHERE i.tenant_id = t.id);
