// A real OAuth 2.0 authorization server (oidc-provider, a certified implementation nobody on this
// project wrote) and a protected FHIR-like resource server that validates its JWT access tokens,
// for koppeltaal-auth's interop tests. Both listen on 127.0.0.1 only, on free ports.
//
//   node servers.mjs [ready-file]
//
// When both listen it prints one JSON line (and writes it to ready-file, if given):
//   {"issuer": "...", "token_endpoint": "...", "fhir_base": "...", "admin": "..."}
//
// The provider is configured as strictly as it allows for the SMART Backend Services profile:
// client credentials only, private_key_jwt the only client authentication, RS512/RS384/ES384
// assertions, the assertion `aud` must be the token endpoint exactly, `sub` the client id, `exp`
// at most 300 s after `iat`, no clock tolerance, every `jti` used once. Access tokens are JWTs
// living ACCESS_TOKEN_TTL seconds (default 4).
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const here = dirname(fileURLToPath(import.meta.url));
const testData = join(here, '..', 'data');
const ttl = Number(process.env.ACCESS_TOKEN_TTL ?? 4);

function publicJwk(file, kid, alg) {
  const jwk = createPublicKey(readFileSync(join(testData, file))).export({ format: 'jwk' });
  return { ...jwk, kid, alg, use: 'sig' };
}

// The test-only keys of tests/data, registered as the Rust tests use them: one client per test
// (so that tests can run in parallel and count their own requests).
const rsa = (alg) => publicJwk('test-only-rsa2048-pkcs8.pem', 'interop-rsa', alg);
const ec = () => publicJwk('test-only-p384-pkcs8.pem', 'interop-ec', 'ES384');
const clients = [
  ['interop-rs512', 'RS512', rsa('RS512')],
  ['interop-rs384', 'RS384', rsa('RS384')],
  ['interop-es384', 'ES384', ec()],
  ['interop-middleware', 'ES384', ec()],
  ['interop-refresh', 'ES384', ec()],
  ['interop-reject', 'RS512', rsa('RS512')],
  ['interop-strict', 'ES384', ec()],
].map(([client_id, alg, jwk]) => ({
  client_id,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'private_key_jwt',
  token_endpoint_auth_signing_alg: alg,
  jwks: { keys: [jwk] },
  scope: 'system/*.read',
  // The provider signs with one ES256 key (below); the default would be RS256.
  id_token_signed_response_alg: 'ES256',
}));

function listen(server) {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server.address().port)));
}

// Per client: what the two servers saw.
const stats = {};
function statsOf(clientId) {
  stats[clientId] ??= {
    token_requests: 0,
    tokens_issued: 0,
    token_failures: 0,
    token_request_times_ms: [],
    token_failure_reasons: [],
    fhir_requests: 0,
    fhir_unauthorized: 0,
    rejections: 0,
  };
  return stats[clientId];
}

// The client id of a token request, from its (not yet verified) assertion: for counting only.
function assertionIssuer(body) {
  try {
    const assertion = new URLSearchParams(body).get('client_assertion');
    return jose.decodeJwt(assertion).iss ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

// The authorization server.
const authServer = createServer();
const authPort = await listen(authServer);
const issuer = `http://127.0.0.1:${authPort}`;
const tokenEndpoint = `${issuer}/token`;
const fhirServer = createServer();
const fhirPort = await listen(fhirServer);
const fhirBase = `http://127.0.0.1:${fhirPort}/fhir`;

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'interop-as', alg: 'ES256', use: 'sig' };

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingKey] },
  scopes: ['system/*.read'],
  clientAuthMethods: ['private_key_jwt'],
  enabledJWA: { clientAuthSigningAlgValues: ['RS512', 'RS384', 'ES384'] },
  clockTolerance: 0,
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => fhirBase,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => {
        if (resource !== fhirBase) throw new errors.InvalidTarget();
        return {
          scope: 'system/*.read',
          audience: fhirBase,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  // SMART Backend Services, as strictly as the provider allows.
  async assertJwtClientAuthClaimsAndHeader(ctx, claims, header, client) {
    if (claims.aud !== tokenEndpoint) {
      throw new errors.InvalidClientAuth('aud must be the token endpoint URL, as one string');
    }
    if (claims.sub !== client.clientId) {
      throw new errors.InvalidClientAuth('sub must be the client_id');
    }
    if (header.typ !== undefined && header.typ !== 'JWT') {
      throw new errors.InvalidClientAuth('typ must be JWT');
    }
    if (typeof claims.iat !== 'number' || claims.exp - claims.iat > 300) {
      throw new errors.InvalidClientAuth('exp must be at most 300 s after iat');
    }
    // Out of the box the provider takes an iat in the future; the Koppeltaal reference server
    // (PyJWT, zero leeway) does not. Be as strict as Koppeltaal.
    if (claims.iat > Math.floor(Date.now() / 1000)) {
      throw new errors.InvalidClientAuth('iat must not be in the future');
    }
    if (!header.kid) {
      throw new errors.InvalidClientAuth('kid is required');
    }
  },
});

provider.use(async (ctx, next) => {
  const isToken = ctx.method === 'POST' && ctx.path === '/token';
  let client;
  if (isToken) {
    // Peek at the form body without consuming it for the provider.
    const chunks = [];
    for await (const chunk of ctx.req) chunks.push(chunk);
    const body = Buffer.concat(chunks).toString();
    const { Readable } = await import('node:stream');
    const replay = Readable.from([Buffer.from(body)]);
    Object.assign(replay, { headers: ctx.req.headers, method: ctx.req.method, url: ctx.req.url });
    ctx.req = replay;
    client = statsOf(assertionIssuer(body));
    client.token_requests += 1;
    client.token_request_times_ms.push(Date.now());
  }
  await next();
  if (client) {
    if (ctx.status === 200) {
      client.tokens_issued += 1;
    } else {
      client.token_failures += 1;
      client.token_failure_reasons.push(String(ctx.body?.error_description ?? ctx.body?.error ?? ctx.status));
    }
  }
});
authServer.on('request', provider.callback());

// The resource server: validates the provider's JWT access tokens.
const jwks = jose.createRemoteJWKSet(new URL(`${issuer}/jwks`));
const rejected = new Set();
const seen = new Map(); // jti -> client id

function json(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) });
  res.end(data);
}

fhirServer.on('request', async (req, res) => {
  const url = new URL(req.url, fhirBase);
  if (url.pathname === '/_admin/stats') {
    return json(res, 200, statsOf(url.searchParams.get('client') ?? 'unknown'));
  }
  if (url.pathname === '/_admin/reject' && req.method === 'POST') {
    // Server-side rejection of every token of the client seen so far, as a revocation would.
    const client = url.searchParams.get('client');
    for (const [jti, owner] of seen) if (owner === client) rejected.add(jti);
    statsOf(client).rejections += 1;
    return json(res, 200, { rejected: rejected.size });
  }
  if (url.pathname === '/fhir/.well-known/smart-configuration') {
    return json(res, 200, {
      issuer,
      token_endpoint: tokenEndpoint,
      token_endpoint_auth_methods_supported: ['private_key_jwt'],
      token_endpoint_auth_signing_alg_values_supported: ['RS512', 'RS384', 'ES384'],
      grant_types_supported: ['client_credentials'],
      capabilities: ['client-confidential-asymmetric'],
    });
  }
  if (!url.pathname.startsWith('/fhir/')) {
    return json(res, 404, { error: 'not found' });
  }
  const match = /^Bearer (.+)$/i.exec(req.headers.authorization ?? '');
  let client = statsOf('unknown');
  try {
    if (!match) throw new Error('no bearer token');
    const { payload } = await jose.jwtVerify(match[1], jwks, {
      issuer,
      audience: fhirBase,
      clockTolerance: 0,
    });
    client = statsOf(payload.client_id);
    client.fhir_requests += 1;
    seen.set(payload.jti, payload.client_id);
    if (rejected.has(payload.jti)) throw new Error('rejected');
    req.resume();
    return json(res, req.method === 'POST' ? 201 : 200, {
      resourceType: url.pathname.split('/')[2] || 'Bundle',
      meta: { source: payload.client_id ?? payload.sub },
    });
  } catch {
    client.fhir_unauthorized += 1;
    req.resume();
    return json(res, 401, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'security' }] });
  }
});

const ready = JSON.stringify({
  issuer,
  token_endpoint: tokenEndpoint,
  fhir_base: fhirBase,
  admin: `http://127.0.0.1:${fhirPort}/_admin`,
});
console.log(ready);
if (process.argv[2]) writeFileSync(process.argv[2], ready);

// Started by a test process (tests/support/servers.rs): end with it, when it closes our input.
if (process.env.KOPPELTAAL_EXIT_ON_STDIN_CLOSE) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('close', () => process.exit(0));
  process.stdin.resume();
}
