// A sale behind its waiting room: a spike of buyers joins the queue before the start, each polls when the
// API says it is worth it (retry_after_ms), buys with its admission token once admitted; a few bots poll as
// fast as they can (they gain nothing: 429s, the same place), and a few cheaters buy without a token.
//   BASE_URL, SALE, JWT_SECRET or TOKENS_PATH, BUYERS (300), BOTS (10), CHEATERS (10),
//   JOIN_SECONDS (arrivals spread over this many seconds, most of them early: a spike; 4),
//   MAX_SECONDS (a buyer gives up after this long; 120), CHEAT_SECONDS (a cheater tries this long; 20)
import http from 'k6/http';
import { sleep } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { tokenFor } from './lib/token.js';

const buyers = parseInt(__ENV.BUYERS || '300', 10);
const bots = parseInt(__ENV.BOTS || '10', 10);
const cheaters = parseInt(__ENV.CHEATERS || '10', 10);
const joinSeconds = parseFloat(__ENV.JOIN_SECONDS || '4');
const maxSeconds = parseFloat(__ENV.MAX_SECONDS || '120');
const cheatSeconds = parseFloat(__ENV.CHEAT_SECONDS || '20');
const base = (__ENV.BASE_URL || 'http://127.0.0.1:8000').replace(/\/$/, '');
const sale = __ENV.SALE || 'demo';
const secret = __ENV.JWT_SECRET;

export const options = {
  scenarios: {
    room: {
      executor: 'per-vu-iterations',
      vus: buyers + bots + cheaters,
      iterations: 1,
      maxDuration: `${Math.ceil(maxSeconds + joinSeconds + 30)}s`,
    },
  },
  thresholds: {
    queue_unexpected: ['count==0'],
    reservations_unexpected: ['count==0'],
    cheaters_accepted: ['count==0'],
    queue_joined: ['count>0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(95)', 'p(99)'],
};

// 403/404/409/429 are the room's and the sale's answers, not failures.
http.setResponseCallback(http.expectedStatuses(200, 201, 202, 403, 404, 409, 429));

const joined = new Counter('queue_joined');
const polls = new Counter('queue_polls');
const tooSoon = new Counter('queue_too_soon');
const admitted = new Counter('queue_admitted');
const expired = new Counter('queue_expired');
const gaveUp = new Counter('queue_gave_up');
const queueUnexpected = new Counter('queue_unexpected');
const accepted = new Counter('reservations_accepted');
const soldOut = new Counter('reservations_sold_out');
const refused = new Counter('reservations_refused');
const unexpected = new Counter('reservations_unexpected');
const cheatersAccepted = new Counter('cheaters_accepted');
const cheatersRefused = new Counter('cheaters_refused');
const waited = new Trend('queue_wait_ms', true);

function headers(buyer, extra) {
  return Object.assign({ 'Content-Type': 'application/json', Authorization: `Bearer ${tokenFor(secret, buyer)}` },
    extra || {});
}

function buyWith(buyer, admission) {
  const extra = admission ? { 'Admission-Token': admission } : {};
  return http.post(`${base}/v1/sales/${sale}/reservations`, '{"quantity":1}',
    { headers: headers(buyer, extra), tags: { name: 'reserve' } });
}

// A spike: most arrivals in the first moments of JOIN_SECONDS (the square of a uniform draw).
function arrive() {
  const u = Math.random();
  sleep(u * u * joinSeconds);
}

function cheat(buyer) {
  arrive();
  const deadline = Date.now() + cheatSeconds * 1000;
  // Buy without a token, then with a forged one, until the sale answers something final.
  while (Date.now() < deadline) {
    const res = buyWith(buyer, Math.random() < 0.5 ? null : 'a1.eyJmYWtlIjp0cnVlfQ.c2lnbmF0dXJl');
    if (res.status === 202 || res.status === 200) { cheatersAccepted.add(1); return; }
    if (res.status === 403) cheatersRefused.add(1);
    else if (res.status === 409) return; // sold out or closed: nothing left to cheat for
    sleep(1);
  }
}

function queue(buyer, bot) {
  arrive();
  const t0 = Date.now();
  const deadline = t0 + maxSeconds * 1000;
  let res = http.post(`${base}/v1/sales/${sale}/queue`, null, { headers: headers(buyer), tags: { name: 'join' } });
  if (res.status === 409 || res.status === 404) return; // sold out, closed, no room: an answer
  if (res.status !== 201 && res.status !== 200) { queueUnexpected.add(1); return; }
  joined.add(1);
  let body = res.json();
  const ticket = body.ticket;
  while (body.status !== 'admitted' && body.status !== 'expired') {
    if (Date.now() > deadline) { gaveUp.add(1); return; }
    // A bot ignores the advice and asks every 50 ms; a buyer waits as told.
    sleep(bot ? 0.05 : Math.max(50, body.retry_after_ms || 1000) / 1000);
    res = http.get(`${base}/v1/sales/${sale}/queue/${ticket}`, { headers: headers(buyer), tags: { name: 'poll' } });
    polls.add(1);
    if (res.status === 429) { tooSoon.add(1); continue; }
    if (res.status === 409) return; // the sale ended meanwhile
    if (res.status !== 200) { queueUnexpected.add(1); return; }
    body = res.json();
  }
  if (body.status === 'expired') { expired.add(1); return; }
  admitted.add(1);
  waited.add(Date.now() - t0);
  const buy = buyWith(buyer, body.admission_token);
  if (buy.status === 202 || buy.status === 200) accepted.add(1);
  else if (buy.status === 409 && buy.json('error.code') === 'sold_out') soldOut.add(1);
  else if (buy.status === 409 || buy.status === 403) refused.add(1);
  else unexpected.add(1);
}

export default function () {
  const vu = __VU - 1;
  if (vu < buyers) queue(`buyer-${vu}`, false);
  else if (vu < buyers + bots) queue(`bot-${vu - buyers}`, true);
  else cheat(`cheater-${vu - buyers - bots}`);
}

export function handleSummary(data) {
  const m = data.metrics;
  const v = (k) => (m[k] ? m[k].values.count : 0);
  const line = `waiting-room: joined ${v('queue_joined')} admitted ${v('queue_admitted')} polls ${v('queue_polls')} `
    + `too_soon ${v('queue_too_soon')} expired ${v('queue_expired')} gave_up ${v('queue_gave_up')} `
    + `accepted ${v('reservations_accepted')} sold_out ${v('reservations_sold_out')} `
    + `cheaters accepted ${v('cheaters_accepted')} refused ${v('cheaters_refused')} `
    + `unexpected ${v('queue_unexpected') + v('reservations_unexpected')}\n`;
  const out = { stdout: line };
  out[__ENV.SUMMARY_PATH || 'waiting-room-summary.json'] = JSON.stringify(data, null, 2);
  return out;
}
