// A real authorization server for tests/test_dpop_oidc_provider.py: panva's oidc-provider
// issuing DPoP-bound (RFC 9449) JWT access tokens by the client_credentials grant.
//
// Environment:
//   AUDIENCE       the one resource indicator (RFC 8707) it issues tokens for; the token's aud
//   CLIENT_ID      the one registered client (client_secret_basic, client_credentials only)
//   CLIENT_SECRET  its secret
//   SCOPE          the scopes the resource server offers (space separated)
//   REQUIRE_NONCE  "1": the token endpoint demands a DPoP nonce of its own (use_dpop_nonce)
//   TLS_CERT, TLS_KEY, TLS_CLIENT_CA  optional PEM files: also serve HTTPS, asking for a client
//                  certificate, and register CLIENT_ID-mtls, whose tokens are bound to its
//                  certificate (RFC 8705 cnf.x5t#S256) instead of a DPoP key
//
// Listens on 127.0.0.1, on a free port, plain HTTP (certbound accepts http:// issuers; this
// one is on loopback only). Prints one JSON line on stdout once it serves:
//   {"issuer": "http://127.0.0.1:PORT", "mtls": "https://127.0.0.1:PORT2" (with TLS_CERT)}
// Never prints a token or a key. Its signing key is made at start and lives only in memory.
import { generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createTlsServer } from 'node:https';

import Provider, { errors } from 'oidc-provider';

const need = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`server.mjs: ${name} is required`);
    process.exit(2);
  }
  return value;
};
const audience = need('AUDIENCE');
const clientId = need('CLIENT_ID');
const clientSecret = need('CLIENT_SECRET');
const scope = need('SCOPE');
const requireNonce = process.env.REQUIRE_NONCE === '1';

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'as-1', alg: 'ES256', use: 'sig' };

const server = createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

// The same provider over HTTPS, for certificate-bound tokens; certbound still reads the issuer's
// metadata and keys over plain HTTP.
let mtlsServer;
if (process.env.TLS_CERT) {
  mtlsServer = createTlsServer({
    cert: readFileSync(need('TLS_CERT')),
    key: readFileSync(need('TLS_KEY')),
    ca: readFileSync(need('TLS_CLIENT_CA')),
    requestCert: true,
    rejectUnauthorized: true,
  });
  await new Promise((resolve) => mtlsServer.listen(0, '127.0.0.1', resolve));
}
const mtlsClients = mtlsServer
  ? [
      {
        client_id: `${clientId}-mtls`,
        client_secret: clientSecret,
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope,
        tls_client_certificate_bound_access_tokens: true,
      },
    ]
  : [];

const provider = new Provider(issuer, {
  jwks: { keys: [signingKey] },
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope,
      // The client must prove a key at the token endpoint; its tokens are bound to it.
      dpop_bound_access_tokens: true,
    },
    ...mtlsClients,
  ],
  scopes: scope.split(' '),
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    mTLS: {
      enabled: Boolean(mtlsServer),
      certificateBoundAccessTokens: true,
      getCertificate: (ctx) => {
        const peer = ctx.socket.getPeerCertificate?.();
        return peer?.raw ? new X509Certificate(peer.raw) : undefined;
      },
    },
    dPoP: {
      enabled: true,
      nonceSecret: randomBytes(32),
      requireNonce: () => requireNonce,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (resourceIndicator !== audience) {
          throw new errors.InvalidTarget();
        }
        return {
          audience,
          scope,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
});
// The in-memory adapter and development defaults are what a test wants; their warnings are
// on stderr, which the fixture keeps in a log file.
provider.on('server_error', (ctx, err) => console.error('server_error', err));

server.on('request', provider.callback());
mtlsServer?.on('request', provider.callback());
console.log(
  JSON.stringify({
    issuer,
    ...(mtlsServer ? { mtls: `https://127.0.0.1:${mtlsServer.address().port}` } : {}),
  }),
);

// Nothing to save: the in-memory state goes with the process.
process.on('SIGTERM', () => process.exit(0));
process.on('SIGINT', () => process.exit(0));
