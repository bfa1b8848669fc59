#!/usr/bin/env node
'use strict';
/**
 * Ingests an image, follows the operation to the end, searches with the same bytes, and shows how an error
 * reads. Prints a JSON summary on stdout (progress on stderr).
 *
 *   DEEPLENS_API_KEY=dlk_… node example.js 127.0.0.1:50051 tenants/acme/collections/photos cat.jpg
 */
const fs = require('node:fs');
const path = require('node:path');
const { DeepLensClient } = require('./deeplens');

async function main() {
  const [target, collection, file] = process.argv.slice(2);
  if (!target || !collection || !file || !process.env.DEEPLENS_API_KEY) {
    console.error('usage: DEEPLENS_API_KEY=dlk_… node example.js HOST:PORT tenants/T/collections/C IMAGE');
    return 2;
  }
  const client = new DeepLensClient(target, process.env.DEEPLENS_API_KEY);
  const tenant = collection.split('/collections/')[0];
  const content = fs.readFileSync(file);
  const imageId = path.basename(file).replace(/\.[^.]+$/, '');

  const operation = await client.ingestImage(collection, imageId, content, ['node']);
  console.error(`ingest started: ${operation.name}`);
  const done = await client.waitOperation(operation.name, (op) => {
    const m = op.metadata_decoded || {};
    console.error(`  ${m.state}: ${m.processed}/${m.total} processed`);
  });
  if (done.error) throw new Error(`ingest failed: ${done.error.message}`);
  const indexed = client.unpack(done.response).image;

  const found = await client.searchImages({ parent: tenant, imageContent: content, topK: 3 });
  let refused = null;
  try {
    await client.call(client.admin, 'GetTenant', { name: 'tenants/somebody-else' });
  } catch (err) {
    refused = { code: err.code, reason: (client.errorInfo(err) || {}).reason };
  }
  client.close();
  console.log(JSON.stringify({
    operation: done.name,
    done: done.done,
    image: indexed.name,
    model: found.model,
    results: found.results.map((r) => ({ name: r.image.name, score: r.score })),
    refused,
  }, null, 2));
  return 0;
}

main().then((code) => process.exit(code), (err) => {
  console.error(`error: ${err.message}`);
  process.exit(1);
});
