// A long steady load to find leaks and slow drift: RATE req/s for DURATION (default 200/s for 10m).
//   BASE_URL, SALE, JWT_SECRET, BUYERS, RATE, DURATION
import { buy, config, summaryWriter } from './lib/buy.js';
import { steady, TREND_STATS } from './lib/shapes.js';

export const options = {
  scenarios: { soak: steady(200, '10m', 1000) },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: [`p(99)<${__ENV.P99_MS || '250'}`],
    reservations_unexpected: ['count==0'],
  },
  summaryTrendStats: TREND_STATS,
};

const cfg = config();
export default function () { buy(cfg); }
export const handleSummary = summaryWriter('soak');
