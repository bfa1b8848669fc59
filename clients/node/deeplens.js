'use strict';
/**
 * DeepLens client for Node.js: @grpc/grpc-js with the service definitions loaded at run time from the
 * repository's .proto files (@grpc/proto-loader), so nothing is generated or copied by hand.
 *
 *   const { DeepLensClient } = require('./deeplens');
 *   const client = new DeepLensClient('127.0.0.1:50051', process.env.DEEPLENS_API_KEY);
 *   const op = await client.ingestImage('tenants/acme/collections/photos', 'cat', fs.readFileSync('cat.jpg'));
 *   const done = await client.waitOperation(op.name, (o) => console.log(o.metadata));
 *   const { results } = await client.searchImages({ parent: 'tenants/acme', imageContent: bytes, topK: 5 });
 */
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTO_ROOT = process.env.DEEPLENS_PROTO_ROOT || path.resolve(__dirname, '..', '..', 'proto');
const FILES = [
  'deeplens/v1/admin_service.proto',
  'deeplens/v1/ingest_service.proto',
  'deeplens/v1/search_service.proto',
  'google/rpc/error_details.proto',
];
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

function loadTypes(protoRoot) {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => (path.isAbsolute(target) ? target : path.join(protoRoot, target));
  root.loadSync(FILES, { keepCase: true });
  return root;
}

/** The `ErrorInfo` of a failed call (AIP-193): `{ reason, domain, metadata }`, or null when it has none. */
function errorInfo(err, types) {
  const raw = err && err.metadata && err.metadata.get('grpc-status-details-bin')[0];
  if (!raw) return null;
  const status = types.lookupType('google.rpc.Status').decode(raw);
  for (const any of status.details) {
    if (any.type_url.endsWith('/google.rpc.ErrorInfo')) {
      return types.lookupType('google.rpc.ErrorInfo').toObject(types.lookupType('google.rpc.ErrorInfo').decode(any.value));
    }
  }
  return null;
}

class DeepLensClient {
  /**
   * @param {string} target host:port
   * @param {string} apiKey a `dlk_…` key
   * @param {{credentials?: grpc.ChannelCredentials, deadlineMs?: number, retries?: number, protoRoot?: string}} options
   *   credentials: TLS by `grpc.credentials.createSsl(...)`; plaintext by default (local stacks).
   */
  constructor(target, apiKey, options = {}) {
    const protoRoot = options.protoRoot || PROTO_ROOT;
    const api = grpc.loadPackageDefinition(
      protoLoader.loadSync(FILES, { ...LOADER_OPTIONS, includeDirs: [protoRoot] }),
    ).deeplens.v1;
    const credentials = options.credentials || grpc.credentials.createInsecure();
    this.search = new api.SearchService(target, credentials);
    this.ingest = new api.IngestService(target, credentials, { channelOverride: this.search.getChannel() });
    this.admin = new api.AdminService(target, credentials, { channelOverride: this.search.getChannel() });
    this.types = loadTypes(protoRoot);
    this.apiKey = apiKey;
    this.deadlineMs = options.deadlineMs || 30000;
    this.retries = options.retries === undefined ? 3 : options.retries;
  }

  metadata() {
    const md = new grpc.Metadata();
    md.set('authorization', `Bearer ${this.apiKey}`);
    return md;
  }

  /** A unary call with a deadline, retried with exponential backoff while the server is UNAVAILABLE. */
  async call(stub, method, request, deadlineMs = this.deadlineMs) {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await new Promise((resolve, reject) => {
          stub[method](request, this.metadata(), { deadline: Date.now() + deadlineMs }, (err, response) =>
            err ? reject(err) : resolve(response));
        });
      } catch (err) {
        if (err.code !== grpc.status.UNAVAILABLE || attempt >= this.retries) throw err;
        await new Promise((r) => setTimeout(r, 200 * 2 ** attempt));
      }
    }
  }

  /** Starts indexing one image (bytes); resolves with its long-running operation. */
  ingestImage(parent, imageId, content, tags = []) {
    return this.call(this.ingest, 'IngestImage', { parent, image_id: imageId, content, tags });
  }

  /** Follows an operation until it is done, calling `onUpdate` with each version; resolves with the last. */
  waitOperation(name, onUpdate = () => {}, deadlineMs = 300000) {
    return new Promise((resolve, reject) => {
      let last = null;
      const stream = this.ingest.WatchOperation({ name }, this.metadata(), { deadline: Date.now() + deadlineMs });
      stream.on('data', (message) => {
        last = message.operation;
        last.metadata_decoded = this.unpack(last.metadata);
        onUpdate(last);
      });
      stream.on('error', reject);
      stream.on('end', () => (last && last.done ? resolve(last) : reject(new Error(`${name} ended unfinished`))));
    });
  }

  /** The message inside a google.protobuf.Any (an operation's metadata or response), as a plain object. */
  unpack(any) {
    if (!any || !any.type_url) return null;
    const type = this.types.lookupType(any.type_url.split('/').pop());
    return type.toObject(type.decode(any.value), { longs: String, enums: String, defaults: true });
  }

  /** `{ parent, imageContent | imageName, topK, minScore }` → SearchImagesResponse. */
  searchImages({ parent, imageContent, imageName, topK = 10, minScore = 0 }) {
    const request = { parent, top_k: topK, min_score: minScore };
    if (imageContent) request.image_content = imageContent;
    else request.image_name = imageName;
    return this.call(this.search, 'SearchImages', request);
  }

  /** Every duplicate group of a tenant or collection, following page tokens. */
  async listDuplicateGroups(parent) {
    const groups = [];
    let pageToken = '';
    do {
      const page = await this.call(this.search, 'ListDuplicateGroups', { parent, page_size: 100, page_token: pageToken });
      groups.push(...page.duplicate_groups);
      pageToken = page.next_page_token;
    } while (pageToken);
    return groups;
  }

  errorInfo(err) {
    return errorInfo(err, this.types);
  }

  close() {
    this.search.close();
  }
}

module.exports = { DeepLensClient, errorInfo, grpc };
