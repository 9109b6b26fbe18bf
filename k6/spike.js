// The flash-sale spike: arrivals ramp 50 -> 300 -> 1,000 req/s, hold, and taper, from thousands of
// distinct buyers. Rates and durations scale with env vars so the same script runs locally and in-cluster:
//   BASE_URL, SALE, JWT_SECRET, BUYERS, PEAK_RATE (1000), MID_RATE (300), START_RATE (50), STAGE_SECONDS (10)
import { buy, config, summaryWriter } from './lib/buy.js';
import { spike, TREND_STATS } from './lib/shapes.js';

export const options = {
  scenarios: { spike: spike() },
  thresholds: {
    http_req_failed: ['rate<0.01'],
    http_req_duration: [`p(95)<${__ENV.P95_MS || '500'}`],
    reservations_unexpected: ['count==0'],
  },
  summaryTrendStats: TREND_STATS,
};

const cfg = config();
export default function () { buy(cfg); }
export const handleSummary = summaryWriter('spike');
