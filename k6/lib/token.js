// Buyer tokens minted inside k6: the same HS256 JWT as stampede.tokens.mint (claims sub, iss, aud,
// scope, iat, exp), so thousands of distinct buyers need no token file.
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';
import { SharedArray } from 'k6/data';

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

// Tokens minted beforehand (TOKENS_PATH: 'sub<TAB>token' lines of `stampede mint-token --count`), so a load test
// in the cluster never holds the signing secret. Read once, in the init context.
const minted = __ENV.TOKENS_PATH
  ? new SharedArray('tokens', () => open(__ENV.TOKENS_PATH).split('\n').filter((l) => l).map((l) => l.split('\t')))
  : null;
let byName = null;

// One token per buyer per VU, re-minted before it expires (or looked up among the minted ones).
const cache = {};
export function tokenFor(secret, subject) {
  if (minted) {
    if (byName === null) {
      byName = {};
      for (const [sub, token] of minted) byName[sub] = token;
    }
    const token = byName[subject];
    if (!token) throw new Error(`no minted token for ${subject} in ${__ENV.TOKENS_PATH}`);
    return token;
  }
  const now = Date.now();
  const hit = cache[subject];
  if (hit && hit.until > now) return hit.token;
  const token = mint(secret, subject);
  cache[subject] = { token, until: now + 600 * 1000 };
  return token;
}
