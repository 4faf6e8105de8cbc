// A real DPoP client (RFC 9449) for tests/test_dpop_oidc_provider.py, built on panva's
// oauth4webapi as an application would use it: it makes a key pair, gets a DPoP-bound access
// token from the authorization server by the client_credentials grant (proving the key at the
// token endpoint), then calls the resource with `Authorization: DPoP <token>` and a fresh proof.
//
//   node client.mjs ISSUER URL [MODE] [REQUESTS]
//
// MODE (default "dpop"):
//   dpop       REQUESTS requests (default 1), each with its own proof, as the library makes them
//   replay     one request, then the same request with the very same headers (the same proof)
//   bearer     the DPoP-bound token sent as `Bearer` without a proof (a client that forgot DPoP)
//   other-key  the token with a proof signed by a second key pair (a stolen token)
//
// Server nonces (RFC 9449 §8 and §9) are handled as a real client does: an answer with
// error="use_dpop_nonce" (the token endpoint's 400, a resource's 401 DPoP challenge) is
// retried once, the library putting the DPoP-Nonce it was sent into the new proof.
//
// Environment: CLIENT_ID, CLIENT_SECRET, AUDIENCE (the resource indicator), SCOPE; for TLS to
// the resource NODE_EXTRA_CA_CERTS names the CA of its certificate.
//
// Prints one JSON object on stdout: the token's claims (never the token or its signature), the
// public key's thumbprint, the token endpoint's nonce retries, and per request its status,
// WWW-Authenticate, DPoP-Nonce, body and nonce retries. Never a token, proof or key.
import { webcrypto } from 'node:crypto';

import * as oauth from 'oauth4webapi';

// Node 18 (Debian bookworm's) has WebCrypto, but not yet as the globals oauth4webapi expects.
globalThis.crypto ??= webcrypto;
globalThis.CryptoKey ??= webcrypto.CryptoKey;

const [issuerArg, urlArg, mode = 'dpop', count = '1'] = process.argv.slice(2);
if (!issuerArg || !urlArg) {
  console.error('usage: node client.mjs ISSUER URL [dpop|replay|bearer|other-key] [REQUESTS]');
  process.exit(2);
}
const env = (name) => {
  const value = process.env[name];
  if (!value) {
    console.error(`client.mjs: ${name} is required`);
    process.exit(2);
  }
  return value;
};
const issuer = new URL(issuerArg);
const resource = new URL(urlArg);
const client = { client_id: env('CLIENT_ID') };
const clientAuth = oauth.ClientSecretBasic(env('CLIENT_SECRET'));
// The authorization server is plain HTTP on loopback; the resource is always https.
const insecure = { [oauth.allowInsecureRequests]: true };

const newKeyPair = () =>
  crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify']);

// Calls `request` and, on a use_dpop_nonce error, once more (the DPoP handle has cached the
// nonce from the DPoP-Nonce header by then). Returns the result and the number of retries.
async function withNonceRetry(request) {
  try {
    return { result: await request(), retries: 0 };
  } catch (err) {
    if (!oauth.isDPoPNonceError(err)) throw err;
    return { result: await request(), retries: 1 };
  }
}

async function getToken(dpop) {
  const as = await oauth.processDiscoveryResponse(
    issuer,
    await oauth.discoveryRequest(issuer, insecure),
  );
  const parameters = new URLSearchParams({ resource: env('AUDIENCE'), scope: env('SCOPE') });
  const { result, retries } = await withNonceRetry(async () => {
    const response = await oauth.clientCredentialsGrantRequest(
      as,
      client,
      clientAuth,
      parameters,
      { ...insecure, DPoP: dpop },
    );
    return oauth.processClientCredentialsResponse(as, client, response);
  });
  if (result.token_type !== 'dpop') {
    throw new Error(`expected a DPoP-bound token, got token_type ${result.token_type}`);
  }
  return { token: result.access_token, retries };
}

// Headers of the last request the library sent, so `replay` can send them again unchanged.
let lastSent;
const recordingFetch = (url, options) => {
  lastSent = { url, method: options.method, headers: { ...options.headers } };
  return fetch(url, options);
};

async function describe(response, retries) {
  return {
    status: response.status,
    www_authenticate: response.headers.get('www-authenticate'),
    dpop_nonce: response.headers.get('dpop-nonce'),
    body: await response.text(),
    nonce_retries: retries,
  };
}

async function callResource(token, dpop) {
  const options = { [oauth.customFetch]: recordingFetch, ...(dpop ? { DPoP: dpop } : {}) };
  let response;
  let retries = 0;
  try {
    ({ result: response, retries } = await withNonceRetry(() =>
      oauth.protectedResourceRequest(token, 'GET', resource, new Headers(), null, options),
    ));
  } catch (err) {
    // A refusal with a challenge: the library throws it; the test wants to see it.
    if (!(err instanceof oauth.WWWAuthenticateChallengeError)) throw err;
    response = err.response;
  }
  return describe(response, retries);
}

function claimsOf(token) {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
}

const keyPair = await newKeyPair();
const dpop = oauth.DPoP(client, keyPair);
const { token, retries: tokenNonceRetries } = await getToken(dpop);
const requests = [];
if (mode === 'dpop') {
  for (let i = 0; i < Number(count); i += 1) requests.push(await callResource(token, dpop));
} else if (mode === 'replay') {
  requests.push(await callResource(token, dpop));
  const { url, method, headers } = lastSent;
  requests.push(await describe(await fetch(url, { method, headers }), 0));
} else if (mode === 'bearer') {
  requests.push(await callResource(token, undefined));
} else if (mode === 'other-key') {
  requests.push(await callResource(token, oauth.DPoP(client, await newKeyPair())));
} else {
  console.error(`client.mjs: unknown mode ${mode}`);
  process.exit(2);
}
console.log(
  JSON.stringify({
    claims: claimsOf(token),
    jkt: await dpop.calculateThumbprint(),
    token_nonce_retries: tokenNonceRetries,
    sent_scheme: lastSent.headers.authorization.split(' ')[0],
    requests,
  }),
);
