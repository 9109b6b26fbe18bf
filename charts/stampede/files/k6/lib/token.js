// Buyer tokens minted inside k6: the same HS256 JWT as stampede.tokens.mint (claims sub, iss, aud,
// scope, iat, exp), so thousands of distinct buyers need no token file.
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';

const HEADER = encoding.b64encode(JSON.stringify({ alg: 'HS256', typ: 'JWT' }), 'rawurl');

export function mint(secret, subject, ttlSeconds = 900) {
  const iat = Math.floor(Date.now() / 1000);
  const claims = {
    sub: subject, iss: __ENV.JWT_ISSUER || 'stampede', aud: __ENV.JWT_AUDIENCE || 'stampede-api',
    scope: 'buy', iat, exp: iat + ttlSeconds,
  };
  const input = `${HEADER}.${encoding.b64encode(JSON.stringify(claims), 'rawurl')}`;
  return `${input}.${crypto.hmac('sha256', secret, input, 'base64rawurl')}`;
}

// One token per buyer per VU, re-minted before it expires.
const cache = {};
export function tokenFor(secret, subject) {
  const now = Date.now();
  const hit = cache[subject];
  if (hit && hit.until > now) return hit.token;
  const token = mint(secret, subject);
  cache[subject] = { token, until: now + 600 * 1000 };
  return token;
}
