// A long steady load to find leaks and slow drift: RATE req/s for DURATION (default 200/s for 10m).
//   BASE_URL, SALE, JWT_SECRET, BUYERS, RATE, DURATION
//   INTERVAL_S, INTERVALS: tag each request with its interval since the start (tag `iv`, INTERVAL_S
//   seconds long) and its minute (tag `minute`), so the summary holds p50/p99 per interval and per
//   minute (a submetric appears in the summary only with a threshold, hence the always-true ones).
import exec from 'k6/execution';
import { buy, config, summaryWriter } from './lib/buy.js';
import { steady, TREND_STATS } from './lib/shapes.js';

const intervalS = parseInt(__ENV.INTERVAL_S || '0', 10);
const intervals = parseInt(__ENV.INTERVALS || '0', 10);

const thresholds = {
  http_req_failed: ['rate<0.01'],
  http_req_duration: [`p(99)<${__ENV.P99_MS || '250'}`],
  reservations_unexpected: ['count==0'],
};
if (intervalS > 0) {
  for (let i = 0; i < intervals; i++) thresholds[`http_req_duration{iv:${i}}`] = ['max>=0'];
  for (let m = 0; m * 60 < intervals * intervalS; m++) thresholds[`http_req_duration{minute:${m}}`] = ['max>=0'];
}

export const options = {
  scenarios: { soak: steady(200, '10m', 1000) },
  thresholds,
  summaryTrendStats: TREND_STATS,
};

const cfg = config();
export default function () {
  if (intervalS <= 0) {
    buy(cfg);
    return;
  }
  const elapsedS = (Date.now() - exec.scenario.startTime) / 1000;
  buy(cfg, { iv: String(Math.floor(elapsedS / intervalS)), minute: String(Math.floor(elapsedS / 60)) });
}
export const handleSummary = summaryWriter('soak');
