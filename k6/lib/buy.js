// One buy attempt against POST /v1/sales/{sale}/reservations, classified into counters that the
// integrity audit later compares with the ledger.
import http from 'k6/http';
import { Counter, Trend } from 'k6/metrics';
import { tokenFor } from './token.js';

export const accepted = new Counter('reservations_accepted');
export const soldOut = new Counter('reservations_sold_out');
export const limited = new Counter('reservations_limit_reached');
export const closed = new Counter('reservations_sale_closed');
export const rateLimited = new Counter('reservations_rate_limited');
export const unavailable = new Counter('reservations_unavailable');
export const unexpected = new Counter('reservations_unexpected');
export const acceptLatency = new Trend('reservation_accept_ms', true);

// 409s and 429s are answers, not failures: the sale is doing its job.
http.setResponseCallback(http.expectedStatuses(200, 202, 409, 429));

export function config() {
  const secret = __ENV.JWT_SECRET;
  if (!secret && !__ENV.TOKENS_PATH) {
    throw new Error('JWT_SECRET (the API\'s STAMPEDE_JWT_SECRET) or TOKENS_PATH (minted tokens) is required');
  }
  return {
    base: (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/$/, ''),
    sale: __ENV.SALE || 'demo',
    buyers: parseInt(__ENV.BUYERS || '20000', 10),
    secret,
  };
}

export function buy(cfg) {
  const buyer = `buyer-${Math.floor(Math.random() * cfg.buyers)}`;
  const res = http.post(
    `${cfg.base}/v1/sales/${cfg.sale}/reservations`,
    '{"quantity":1}',
    {
      headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${tokenFor(cfg.secret, buyer)}` },
      tags: { name: 'reserve' },
    },
  );
  if (res.status === 202 || res.status === 200) {
    accepted.add(1);
    acceptLatency.add(res.timings.duration);
    return res;
  }
  let code = '';
  try { code = res.json('error.code'); } catch (_) { /* not JSON */ }
  if (res.status === 409 && code === 'sold_out') soldOut.add(1);
  else if (res.status === 409 && code === 'limit_reached') limited.add(1);
  else if (res.status === 409 && code === 'sale_closed') closed.add(1);
  else if (res.status === 429) rateLimited.add(1);
  else if (res.status === 503) unavailable.add(1);
  else unexpected.add(1);
  return res;
}

export function summaryWriter(name) {
  return function handleSummary(data) {
    const out = { stdout: textLine(name, data) };
    out[__ENV.SUMMARY_PATH || `${name}-summary.json`] = JSON.stringify(data, null, 2);
    return out;
  };
}

function textLine(name, data) {
  const m = data.metrics;
  const v = (k, f = 'count') => (m[k] && m[k].values[f] !== undefined ? m[k].values[f] : 0);
  const d = m.http_req_duration ? m.http_req_duration.values : {};
  return `${name}: requests ${v('http_reqs')} (${v('http_reqs', 'rate').toFixed(0)}/s) accepted ${v('reservations_accepted')} `
    + `sold_out ${v('reservations_sold_out')} limit ${v('reservations_limit_reached')} `
    + `closed ${v('reservations_sale_closed')} rate_limited ${v('reservations_rate_limited')} `
    + `unavailable ${v('reservations_unavailable')} unexpected ${v('reservations_unexpected')} `
    + `p50 ${(d.med || 0).toFixed(1)}ms p95 ${(d['p(95)'] || 0).toFixed(1)}ms p99 ${(d['p(99)'] || 0).toFixed(1)}ms\n`;
}
